// The communicator of a process that runs alone: rank 0 of 1, no MPI runtime. A sum over one rank
// is the value itself, so reductions and gathers are copies and every request is complete at once.
#pragma once
#include "comm/communicator.h"

namespace dj::comm {

class SingleCommunicator final : public Communicator {
 public:
  SingleCommunicator();
  ~SingleCommunicator() override;
  SingleCommunicator(const SingleCommunicator&) = delete;
  SingleCommunicator& operator=(const SingleCommunicator&) = delete;

  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "single"; }
  std::string host() const override { return host_; }

  std::unique_ptr<Request> all_reduce_async(float* data, int64_t count) override;
  std::unique_ptr<Request> reduce_scatter_async(const float* send, float* recv,
                                                std::span<const int64_t> counts) override;
  std::unique_ptr<Request> all_gather_async(const float* send, float* recv,
                                            std::span<const int64_t> counts) override;

  void all_reduce_host(double* data, int64_t count) override;
  void broadcast_host(void* data, int64_t bytes, int root) override;
  void barrier() override {}

  [[noreturn]] void abort(int code) override;

 private:
  std::string host_;
};

}  // namespace dj::comm
