#include "comm/single_communicator.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels/core/error.h"

namespace dj::comm {

namespace {

class CompleteRequest final : public Request {
 public:
  bool test() override { return true; }
};

void check_count(const char* operation, int64_t count) {
  if (count < 0) fail("{}: negative count {}", operation, count);
}

// The one count of a "v" collective over one rank.
int64_t own_count(const char* operation, std::span<const int64_t> counts) {
  if (counts.size() != 1) fail("{}: {} counts given for 1 rank", operation, counts.size());
  check_count(operation, counts[0]);
  return counts[0];
}

// memmove: `send` may be `recv` itself (all_gather allows it; for one rank its block is all of it).
void copy(const float* send, float* recv, int64_t count) {
  if (count > 0 && send != recv)
    std::memmove(recv, send, static_cast<size_t>(count) * sizeof(float));
}

}  // namespace

SingleCommunicator::SingleCommunicator() {
  char name[256] = {};
  host_ = ::gethostname(name, sizeof name - 1) == 0 ? name : "localhost";
}

SingleCommunicator::~SingleCommunicator() = default;

std::unique_ptr<Request> SingleCommunicator::all_reduce_async(float*, int64_t count) {
  check_count("all_reduce", count);
  traffic_.all_reduce += count * static_cast<int64_t>(sizeof(float));
  return std::make_unique<CompleteRequest>();
}

std::unique_ptr<Request> SingleCommunicator::reduce_scatter_async(const float* send, float* recv,
                                                                  std::span<const int64_t> counts) {
  const int64_t count = own_count("reduce_scatter", counts);
  copy(send, recv, count);
  traffic_.reduce_scatter += count * static_cast<int64_t>(sizeof(float));
  return std::make_unique<CompleteRequest>();
}

std::unique_ptr<Request> SingleCommunicator::all_gather_async(const float* send, float* recv,
                                                              std::span<const int64_t> counts) {
  const int64_t count = own_count("all_gather", counts);
  copy(send, recv, count);
  traffic_.all_gather += count * static_cast<int64_t>(sizeof(float));
  return std::make_unique<CompleteRequest>();
}

void SingleCommunicator::all_reduce_host(double*, int64_t count) {
  check_count("all_reduce_host", count);
  traffic_.all_reduce += count * static_cast<int64_t>(sizeof(double));
}

void SingleCommunicator::broadcast_host(void*, int64_t bytes, int root) {
  check_count("broadcast_host", bytes);
  if (root != 0) fail("broadcast_host: root {} is not a rank of 1", root);
  traffic_.broadcast += bytes;
}

void SingleCommunicator::abort(int code) {
  std::fflush(nullptr);
  std::_Exit(code);
}

}  // namespace dj::comm
