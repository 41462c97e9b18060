// The MPI communicator: one process per rank, host buffers, nonblocking collectives on a duplicate
// of MPI_COMM_WORLD (so that other MPI users of the process never match our messages). MPI errors
// are returned, not fatal, and thrown as dj::Error.
#pragma once
#if DIJIANG_HAVE_MPI
// The C API only, without the deprecated C++ bindings that <mpi.h> would otherwise pull in.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

#include <vector>

#include "comm/communicator.h"

namespace dj::comm {

class MpiCommunicator final : public Communicator {
 public:
  // All-reduces and reduce-scatters go out in calls of at most `max_chunk` values (several MPI
  // requests behind one Request): MPI counts are int, and Open MPI's nonblocking collectives
  // allocate temporaries as large as a call's data (an all-reduce on every rank, a reduce-scatter on
  // its root), so chunks of 1M values keep those to a few MiB whatever the model's size. Tests lower
  // it to exercise the split. Initialises MPI unless it already is, and then finalises it on
  // destruction.
  static constexpr int64_t kDefaultChunk = int64_t{1} << 20;
  explicit MpiCommunicator(int64_t max_chunk = kDefaultChunk);
  ~MpiCommunicator() override;
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  std::string host() const override { return host_; }

  std::unique_ptr<Request> all_reduce_async(float* data, int64_t count) override;
  std::unique_ptr<Request> reduce_scatter_async(const float* send, float* recv,
                                                std::span<const int64_t> counts) override;
  std::unique_ptr<Request> all_gather_async(const float* send, float* recv,
                                            std::span<const int64_t> counts) override;

  void all_reduce_host(double* data, int64_t count) override;
  void broadcast_host(void* data, int64_t bytes, int root) override;
  void barrier() override;

  // Announces the end to every peer, waits up to kEndGraceSeconds for theirs, then MPI_Abort.
  [[noreturn]] void abort(int code) override;
  // The rank that started the end, as the first announcement to arrive names it.
  int ending_peer() override;

 private:
  // Takes up every end announcement that has arrived (each re-posts the receive).
  void receive_end_notices() noexcept;
  void post_end_receive() noexcept;

  MPI_Comm comm_ = MPI_COMM_NULL;
  // The end announcements travel on a communicator of their own, so that they never match a
  // collective's messages. Each is one int: the rank that started the end (the sender itself, or
  // the rank whose announcement it takes up). A receive is always posted for the next one.
  MPI_Comm end_comm_ = MPI_COMM_NULL;
  MPI_Request end_receive_ = MPI_REQUEST_NULL;
  int end_notice_ = -1;
  std::vector<char> announced_;  // per rank: its announcement arrived (or it is this rank's own)
  int first_starter_ = -1;       // the starter named by the first announcement to arrive
  int lowest_starter_ = -1;      // the lowest starter named by any announcement, or this rank
  int rank_ = 0, size_ = 1;
  std::string host_;
  int64_t max_chunk_;
  bool finalize_ = false;
};

}  // namespace dj::comm
#endif
