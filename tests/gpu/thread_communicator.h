// The host communicator of ranks that are threads of one process (one GPU each), for the device
// checks that run several ranks without MPI: all_reduce_host, broadcast_host and barrier through
// shared memory. Device collectives are the NCCL communicator's job, bootstrapped over this one.
#pragma once
#include <barrier>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/communicator.h"

namespace dj::gpucheck {

struct ThreadGroup {
  explicit ThreadGroup(int n) : size(n), sync(n) {}
  int size;
  std::barrier<> sync;
  std::mutex mutex;
  std::vector<double> sum;
  const void* source = nullptr;
};

class ThreadHostCommunicator final : public comm::Communicator {
 public:
  ThreadHostCommunicator(ThreadGroup& group, int rank) : group_(group), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return group_.size; }
  std::string backend() const override { return "threads"; }
  std::string host() const override { return "localhost"; }
  std::unique_ptr<comm::Request> all_reduce_async(float*, int64_t) override { unsupported(); }
  std::unique_ptr<comm::Request> reduce_scatter_async(const float*, float*, std::span<const int64_t>) override {
    unsupported();
  }
  std::unique_ptr<comm::Request> all_gather_async(const float*, float*, std::span<const int64_t>) override {
    unsupported();
  }
  void all_reduce_host(double* data, int64_t count) override {
    group_.sync.arrive_and_wait();
    if (rank_ == 0) group_.sum.assign(static_cast<size_t>(count), 0.0);
    group_.sync.arrive_and_wait();
    {
      std::lock_guard lock(group_.mutex);
      for (int64_t i = 0; i < count; ++i) group_.sum[static_cast<size_t>(i)] += data[i];
    }
    group_.sync.arrive_and_wait();
    for (int64_t i = 0; i < count; ++i) data[i] = group_.sum[static_cast<size_t>(i)];
    group_.sync.arrive_and_wait();
  }
  void broadcast_host(void* data, int64_t bytes, int root) override {
    group_.sync.arrive_and_wait();
    if (rank_ == root) group_.source = data;
    group_.sync.arrive_and_wait();
    if (rank_ != root && bytes > 0) std::memcpy(data, group_.source, static_cast<size_t>(bytes));
    group_.sync.arrive_and_wait();
  }
  void barrier() override { group_.sync.arrive_and_wait(); }
  [[noreturn]] void abort(int code) override {
    std::fflush(nullptr);
    std::_Exit(code);
  }

 private:
  [[noreturn]] static void unsupported() {
    throw std::logic_error("the thread host communicator has no device collectives");
  }
  ThreadGroup& group_;
  int rank_;
};

}  // namespace dj::gpucheck
