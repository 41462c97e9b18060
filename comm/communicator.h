// One communicator interface for the distributed layer, with three backends:
//   single — one process, no MPI runtime needed (every collective is a copy or nothing);
//   mpi    — OpenMPI on host buffers, one process per rank, launched by mpirun or srun;
//   nccl   — NCCL on device buffers, one rank per GPU, its unique id broadcast over MPI.
//
// Collectives sum. Every operation is asynchronous where the backend allows (MPI's nonblocking
// collectives, NCCL on a stream): the *_async calls start it and return a Request; wait() blocks
// until it completes or the communicator's timeout passes. A timeout is not survivable: wait()
// prints one line naming this rank, the operation and how long it waited, then ends the whole
// job (a peer that died or hangs would otherwise hang every rank forever).
//
// Ending the job is agreed before it is forced (abort()): the rank that ends it first tells every
// peer; a peer waiting in wait() stops waiting, prints its own line (what it waited for, and who
// ends the job) and tells the others too. Each ending rank gives its peers a few seconds to do so,
// then calls MPI_Abort, and Open MPI's launcher stops every process left (a stopped one included:
// SIGCONT, SIGTERM a second later, SIGKILL a second after that). So every rank that was waiting
// reports, and the job ends within seconds of the first report whatever state the culprit is in.
//
// Counts are per rank ("v" collectives): reduce_scatter and all_gather take the number of values
// each rank owns, in rank order, so slices of a flat buffer need no padding.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kernels/core/error.h"

namespace dj::comm {

// An error that every rank of the job raises alike (an agreed setup failure, a stop decided from
// values every rank shares): all ranks exit with it and only the one marked to report prints it,
// so the user reads it once.
class JobError : public Error {
 public:
  JobError(const std::string& message, bool report) : Error(message), report_(report) {}
  bool report() const { return report_; }

 private:
  bool report_;
};

// Bytes this rank handed to each kind of collective (its payload, not the wire traffic of the
// algorithm underneath), for the per-step communication report.
struct Traffic {
  int64_t all_reduce = 0, reduce_scatter = 0, all_gather = 0, broadcast = 0;
  int64_t total() const { return all_reduce + reduce_scatter + all_gather + broadcast; }
};

class Request {
 public:
  virtual ~Request() = default;
  // True once the operation has completed (the buffers may then be reused). Never blocks.
  virtual bool test() = 0;
};

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "single", "mpi" or "nccl"
  // Host name of this rank, for messages.
  virtual std::string host() const = 0;

  // Sum of `count` values across ranks, in place. Buffers are host memory for single/mpi and
  // device memory for nccl.
  virtual std::unique_ptr<Request> all_reduce_async(float* data, int64_t count) = 0;
  // `send` holds sum(counts) values; rank r receives in `recv` the sum over ranks of the block
  // of counts[r] values that starts at sum(counts[0..r)). counts.size() == size().
  virtual std::unique_ptr<Request> reduce_scatter_async(const float* send, float* recv,
                                                        std::span<const int64_t> counts) = 0;
  // Rank r contributes counts[r] values from `send`; every rank receives all blocks in rank
  // order in `recv` (sum(counts) values). `send` may point at this rank's block inside `recv`.
  virtual std::unique_ptr<Request> all_gather_async(const float* send, float* recv,
                                                    std::span<const int64_t> counts) = 0;

  // Blocking helpers: start, then wait().
  void all_reduce(float* data, int64_t count, const char* what);
  void reduce_scatter(const float* send, float* recv, std::span<const int64_t> counts, const char* what);
  void all_gather(const float* send, float* recv, std::span<const int64_t> counts, const char* what);

  // Small host-side operations (metrics, flags, metadata), blocking, with the same timeout.
  virtual void all_reduce_host(double* data, int64_t count) = 0;
  virtual void broadcast_host(void* data, int64_t bytes, int root) = 0;
  virtual void barrier() = 0;

  // Waits for `request`; on timeout reports "rank R of N (host): <what> did not complete within
  // T s ..." on stderr and ends the job. When a peer announces that it is ending the job, reports
  // "rank R of N (host): <what> did not complete (waited S s); rank P is ending the job" and ends
  // it too.
  void wait(Request& request, const char* what);
  // Orders the work the caller issues next after `request`, so it may read the result or reuse
  // the buffers. On host buffers that is wait(); the NCCL backend instead makes its compute stream
  // wait for the collective on the device, and the host does not block.
  virtual void order_after(Request& request, const char* what) { wait(request, what); }

  // Setup consensus: every rank calls it with an empty string when ready or its error message.
  // If any rank failed, every rank throws JobError with the message of the lowest failing rank
  // (prefixed "rank R: " when size() > 1), marked to report on rank 0 only, so that it is printed
  // once and every rank exits cleanly.
  void agree(const std::string& error);

  // Ends every rank of the job. For an error on one rank after setup, when the others may be
  // blocked in a collective. Tells every peer that this rank ends the job, waits up to
  // kEndGraceSeconds until each peer has said the same (the ones waiting in wait() do so at once),
  // then MPI_Abort. Prints nothing itself.
  [[noreturn]] virtual void abort(int code) = 0;

  // The rank of a peer that has announced it is ending the job (see abort()), or -1. Never
  // blocks; wait() polls it.
  virtual int ending_peer() { return -1; }

  // How long abort() waits for the peers to take up the end before it forces it.
  static constexpr double kEndGraceSeconds = 5.0;

  double timeout_seconds() const { return timeout_s_; }
  void set_timeout_seconds(double seconds) { timeout_s_ = seconds; }
  const Traffic& traffic() const { return traffic_; }
  void reset_traffic() { traffic_ = {}; }

 protected:
  Traffic traffic_;

 private:
  double timeout_s_ = 600.0;
};

// True when this process was started by an MPI launcher (mpirun/mpiexec, or srun with PMI/PMIx).
bool launched_by_mpi();

// The host communicator for this process: MPI when launched by mpirun/srun (and built with MPI;
// otherwise a dj::Error saying so), else the single-process one, which needs no MPI runtime.
// Initialises MPI on first use; the returned object finalises it when destroyed.
std::unique_ptr<Communicator> make_host_communicator();

}  // namespace dj::comm
