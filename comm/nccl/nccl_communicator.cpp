// NCCL communicator: see nccl_communicator.h for the ordering guarantees. Host code only (CUDA
// runtime and NCCL calls, no kernels).
#include "comm/nccl/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/error.h"

namespace dj::comm {

namespace detail {

// Completion events, shared between the communicator and its requests so that a request may
// outlive the communicator. `comm` is cleared when the communicator goes away.
struct NcclEventPool {
  std::vector<cudaEvent_t> free;
  ncclComm_t comm = nullptr;
  bool failed = false;  // an asynchronous error was seen: the destructor aborts instead
  std::string where;    // "NCCL rank R of N (host), device D", for messages

  NcclEventPool() = default;
  NcclEventPool(const NcclEventPool&) = delete;
  NcclEventPool& operator=(const NcclEventPool&) = delete;
  ~NcclEventPool() {
    for (cudaEvent_t event : free) cudaEventDestroy(event);  // no throw; errors ignored
  }
};

}  // namespace detail

namespace {

std::string nccl_detail(ncclResult_t status) {
  std::string text = ncclGetErrorString(status);
  const char* last = ncclGetLastError(nullptr);
  if (last != nullptr && last[0] != '\0') text += fmt::format(" ({})", last);
  return text;
}

class NcclRequest final : public Request {
 public:
  NcclRequest(std::shared_ptr<detail::NcclEventPool> pool, cudaEvent_t event, const char* op)
      : pool_(std::move(pool)), event_(event), op_(op) {}
  ~NcclRequest() override { pool_->free.push_back(event_); }
  NcclRequest(const NcclRequest&) = delete;
  NcclRequest& operator=(const NcclRequest&) = delete;

  cudaEvent_t event() const { return event_; }

  bool test() override {
    if (done_) return true;
    const cudaError_t status = cudaEventQuery(event_);
    if (status == cudaSuccess) {
      done_ = true;
      return true;
    }
    if (status != cudaErrorNotReady) {
      pool_->failed = true;
      fail("{}: cudaEventQuery after {} failed: {} ({})", pool_->where, op_,
           cudaGetErrorString(status), cudaGetErrorName(status));
    }
    if (pool_->comm != nullptr) {
      ncclResult_t async = ncclSuccess;
      const ncclResult_t queried = ncclCommGetAsyncError(pool_->comm, &async);
      if (queried != ncclSuccess) {
        pool_->failed = true;
        fail("{}: ncclCommGetAsyncError during {} failed: {}", pool_->where, op_,
             nccl_detail(queried));
      }
      if (async != ncclSuccess && async != ncclInProgress) {
        pool_->failed = true;
        fail("{}: {} failed asynchronously: {}", pool_->where, op_, nccl_detail(async));
      }
    }
    return false;
  }

 private:
  std::shared_ptr<detail::NcclEventPool> pool_;
  cudaEvent_t event_;
  const char* op_;
  bool done_ = false;
};

}  // namespace

// Checked calls: a failure becomes a dj::Error naming the call, this rank and the error string.
#define DJ_CUDA_CHECK(call)                                                                    \
  do {                                                                                         \
    const cudaError_t dj_status_ = (call);                                                     \
    if (dj_status_ != cudaSuccess)                                                             \
      fail("{}: {} failed: {} ({})", events_->where, #call, cudaGetErrorString(dj_status_),    \
           cudaGetErrorName(dj_status_));                                                      \
  } while (0)

#define DJ_NCCL_CHECK(call)                                                                    \
  do {                                                                                         \
    const ncclResult_t dj_status_ = (call);                                                    \
    if (dj_status_ != ncclSuccess)                                                             \
      fail("{}: {} failed: {}", events_->where, #call, nccl_detail(dj_status_));               \
  } while (0)

NcclCommunicator::NcclCommunicator(Communicator& host, int device, cudaStream_t compute_stream)
    : host_(host),
      device_(device),
      rank_(host.rank()),
      size_(host.size()),
      compute_(compute_stream),
      events_(std::make_shared<detail::NcclEventPool>()) {
  set_timeout_seconds(host.timeout_seconds());
  events_->where = fmt::format("NCCL rank {} of {} ({}), device {}", rank_, size_, host.host(), device_);

  // Local setup first; every rank then agrees over the host communicator before the collective
  // part, so that a rank without a usable device fails every rank instead of hanging them.
  ncclUniqueId id{};
  std::string error;
  try {
    int count = 0;
    DJ_CUDA_CHECK(cudaGetDeviceCount(&count));
    if (device < 0 || device >= count)
      fail("{}: CUDA device {} requested but {} device(s) are visible", events_->where, device,
           count);
    DJ_CUDA_CHECK(cudaSetDevice(device_));
    DJ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    DJ_CUDA_CHECK(cudaEventCreateWithFlags(&compute_ready_, cudaEventDisableTiming));
    DJ_CUDA_CHECK(cudaEventCreateWithFlags(&comm_done_, cudaEventDisableTiming));
    if (rank_ == 0) DJ_NCCL_CHECK(ncclGetUniqueId(&id));
  } catch (const std::exception& e) {
    error = e.what();
  }
  try {
    host_.agree(error);
    host_.broadcast_host(&id, static_cast<int64_t>(sizeof id), 0);
    DJ_NCCL_CHECK(ncclCommInitRank(&comm_, size_, id, rank_));
    events_->comm = comm_;
  } catch (...) {
    release();
    throw;
  }
}

NcclCommunicator::~NcclCommunicator() { release(); }

void NcclCommunicator::release() noexcept {
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  if (cudaSetDevice(device_) != cudaSuccess) cudaGetLastError();  // an invalid device: nothing to do
  if (comm_ != nullptr) {
    bool failed = events_->failed;
    ncclResult_t async = ncclSuccess;
    if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess || async != ncclSuccess) failed = true;
#if NCCL_VERSION_CODE >= NCCL_VERSION(2, 14, 0)
    // Finalize completes outstanding operations; after an error it could wait forever.
    if (!failed && ncclCommFinalize(comm_) != ncclSuccess) failed = true;
#endif
    const ncclResult_t status = failed ? ncclCommAbort(comm_) : ncclCommDestroy(comm_);
    if (status != ncclSuccess)
      std::fprintf(stderr, "%s: %s failed: %s\n", events_->where.c_str(),
                   failed ? "ncclCommAbort" : "ncclCommDestroy", ncclGetErrorString(status));
    comm_ = nullptr;
  }
  events_->comm = nullptr;
  // Destroying a stream or event with work still pending is allowed: CUDA releases them once
  // that work completes.
  if (comm_done_ != nullptr) cudaEventDestroy(comm_done_);
  if (compute_ready_ != nullptr) cudaEventDestroy(compute_ready_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  comm_done_ = compute_ready_ = nullptr;
  stream_ = nullptr;
  if (previous >= 0 && previous != device_) cudaSetDevice(previous);
}

void NcclCommunicator::prepare_op(const char* op) {
  if (comm_ == nullptr) fail("{}: {} on a communicator that was aborted", events_->where, op);
  DJ_CUDA_CHECK(cudaSetDevice(device_));
  // The collective must see everything the caller enqueued on the compute stream so far.
  DJ_CUDA_CHECK(cudaEventRecord(compute_ready_, compute_));
  DJ_CUDA_CHECK(cudaStreamWaitEvent(stream_, compute_ready_, 0));
}

std::unique_ptr<Request> NcclCommunicator::finish_op(const char* op) {
  cudaEvent_t event = nullptr;
  if (events_->free.empty()) {
    DJ_CUDA_CHECK(cudaEventCreateWithFlags(&event, cudaEventDisableTiming));
  } else {
    event = events_->free.back();
    events_->free.pop_back();
  }
  const cudaError_t status = cudaEventRecord(event, stream_);
  if (status != cudaSuccess) {
    events_->free.push_back(event);
    fail("{}: cudaEventRecord after {} failed: {} ({})", events_->where, op,
         cudaGetErrorString(status), cudaGetErrorName(status));
  }
  return std::make_unique<NcclRequest>(events_, event, op);
}

void NcclCommunicator::check_counts(std::span<const int64_t> counts, const char* op) const {
  if (static_cast<int>(counts.size()) != size_)
    fail("{}: {} got {} counts for {} ranks", events_->where, op, counts.size(), size_);
  for (const int64_t count : counts)
    if (count < 0) fail("{}: {} got a negative count ({})", events_->where, op, count);
}

void NcclCommunicator::order_after(Request& request, const char* what) {
  auto* nccl = dynamic_cast<NcclRequest*>(&request);
  if (nccl == nullptr) fail("{}: order_after({}) got a request of another communicator", events_->where, what);
  DJ_CUDA_CHECK(cudaSetDevice(device_));
  DJ_CUDA_CHECK(cudaStreamWaitEvent(compute_, nccl->event(), 0));
}

void NcclCommunicator::stream_wait_for_collectives(cudaStream_t stream) {
  DJ_CUDA_CHECK(cudaSetDevice(device_));
  DJ_CUDA_CHECK(cudaEventRecord(comm_done_, stream_));
  DJ_CUDA_CHECK(cudaStreamWaitEvent(stream, comm_done_, 0));
}

std::unique_ptr<Request> NcclCommunicator::all_reduce_async(float* data, int64_t count) {
  if (count < 0) fail("{}: all_reduce got a negative count ({})", events_->where, count);
  prepare_op("all_reduce");
  if (count > 0)
    DJ_NCCL_CHECK(ncclAllReduce(data, data, static_cast<size_t>(count), ncclFloat, ncclSum, comm_,
                                stream_));
  traffic_.all_reduce += count * static_cast<int64_t>(sizeof(float));
  return finish_op("all_reduce");
}

namespace {

bool all_equal(std::span<const int64_t> counts) {
  for (const int64_t count : counts)
    if (count != counts[0]) return false;
  return true;
}

// Runs `enqueue(r, offset)` for every rank with a non-empty block inside one NCCL group. The
// group is always closed, also when a call inside it failed; returns the first failure.
template <typename Enqueue>
std::pair<ncclResult_t, const char*> grouped(std::span<const int64_t> counts, const char* call,
                                             Enqueue&& enqueue) {
  ncclResult_t status = ncclGroupStart();
  if (status != ncclSuccess) return {status, "ncclGroupStart"};
  std::pair<ncclResult_t, const char*> first{ncclSuccess, nullptr};
  int64_t offset = 0;
  for (size_t r = 0; r < counts.size(); ++r) {
    if (counts[r] > 0 && first.first == ncclSuccess) {
      status = enqueue(static_cast<int>(r), offset);
      if (status != ncclSuccess) first = {status, call};
    }
    offset += counts[r];
  }
  status = ncclGroupEnd();
  if (first.first == ncclSuccess && status != ncclSuccess) first = {status, "ncclGroupEnd"};
  return first;
}

}  // namespace

std::unique_ptr<Request> NcclCommunicator::reduce_scatter_async(const float* send, float* recv,
                                                                std::span<const int64_t> counts) {
  check_counts(counts, "reduce_scatter");
  int64_t total = 0;
  for (const int64_t count : counts) total += count;
  prepare_op("reduce_scatter");
  if (all_equal(counts) && !force_grouped_) {
    if (counts[0] > 0)
      DJ_NCCL_CHECK(ncclReduceScatter(send, recv, static_cast<size_t>(counts[0]), ncclFloat,
                                      ncclSum, comm_, stream_));
  } else if (total > 0) {
    // One ncclReduce per owner: rank r receives the sum of block r (recvbuff is used only at
    // the root, so the other ranks pass none).
    const auto [status, call] = grouped(counts, "ncclReduce", [&](int r, int64_t offset) {
      return ncclReduce(send + offset, r == rank_ ? recv : nullptr,
                        static_cast<size_t>(counts[static_cast<size_t>(r)]), ncclFloat, ncclSum, r,
                        comm_, stream_);
    });
    if (status != ncclSuccess)
      fail("{}: {} (reduce_scatter) failed: {}", events_->where, call, nccl_detail(status));
  }
  traffic_.reduce_scatter += total * static_cast<int64_t>(sizeof(float));
  return finish_op("reduce_scatter");
}

std::unique_ptr<Request> NcclCommunicator::all_gather_async(const float* send, float* recv,
                                                            std::span<const int64_t> counts) {
  check_counts(counts, "all_gather");
  int64_t total = 0;
  for (const int64_t count : counts) total += count;
  prepare_op("all_gather");
  if (all_equal(counts) && !force_grouped_) {
    // In place when `send` is this rank's block of `recv`; NCCL detects that itself.
    if (counts[0] > 0)
      DJ_NCCL_CHECK(ncclAllGather(send, recv, static_cast<size_t>(counts[0]), ncclFloat, comm_,
                                  stream_));
  } else if (total > 0) {
    // One ncclBroadcast per owner into its block of `recv`; only the root's sendbuff is read,
    // the others pass their destination (the in-place form).
    const auto [status, call] = grouped(counts, "ncclBroadcast", [&](int r, int64_t offset) {
      float* block = recv + offset;
      const float* source = r == rank_ ? send : block;
      return ncclBroadcast(source, block, static_cast<size_t>(counts[static_cast<size_t>(r)]),
                           ncclFloat, r, comm_, stream_);
    });
    if (status != ncclSuccess)
      fail("{}: {} (all_gather) failed: {}", events_->where, call, nccl_detail(status));
  }
  traffic_.all_gather += counts[static_cast<size_t>(rank_)] * static_cast<int64_t>(sizeof(float));
  return finish_op("all_gather");
}

void NcclCommunicator::all_reduce_host(double* data, int64_t count) {
  host_.all_reduce_host(data, count);
  traffic_.all_reduce += count * static_cast<int64_t>(sizeof(double));
}

void NcclCommunicator::broadcast_host(void* data, int64_t bytes, int root) {
  host_.broadcast_host(data, bytes, root);
  traffic_.broadcast += bytes;
}

void NcclCommunicator::barrier() { host_.barrier(); }

void NcclCommunicator::abort(int code) {
  if (comm_ != nullptr) {
    ncclCommAbort(comm_);  // does not wait for peers; the job ends next either way
    comm_ = nullptr;
    events_->comm = nullptr;
  }
  host_.abort(code);
  std::_Exit(code);  // not reached: the host communicator's abort ends the process
}

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& host, int device,
                                                     cudaStream_t compute_stream) {
  return std::make_unique<NcclCommunicator>(host, device, compute_stream);
}

}  // namespace dj::comm
