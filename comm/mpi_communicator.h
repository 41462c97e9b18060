// The MPI communicator: one process per rank, host buffers, nonblocking collectives on a duplicate
// of MPI_COMM_WORLD (so that other MPI users of the process never match our messages). MPI errors
// are returned, not fatal, and thrown as dj::Error.
#pragma once
#if DIJIANG_HAVE_MPI
// The C API only, without the deprecated C++ bindings that <mpi.h> would otherwise pull in.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>

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

  [[noreturn]] void abort(int code) override;

 private:
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::string host_;
  int64_t max_chunk_;
  bool finalize_ = false;
};

}  // namespace dj::comm
#endif
