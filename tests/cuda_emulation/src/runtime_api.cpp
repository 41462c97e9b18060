// The C API of the emulated CUDA runtime: devices, errors, memory, copies, streams, events and
// launches, over the devices, allocations and state of runtime.cpp.
#include <algorithm>
#include <cstring>

#include "internal.h"

using namespace dj::emu;

namespace {

struct ErrorText {
  cudaError_t code;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInitializationError, "cudaErrorInitializationError", "initialization error"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration", "invalid configuration argument"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection", "invalid copy direction for memcpy"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle", "invalid resource handle"},
    {cudaErrorNotReady, "cudaErrorNotReady", "device not ready"},
    {cudaErrorIllegalAddress, "cudaErrorIllegalAddress", "an illegal memory access was encountered"},
    {cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources", "too many resources requested for launch"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
    {cudaErrorUnknown, "cudaErrorUnknown", "unknown error"},
};

const ErrorText* error_text(cudaError_t error) {
  for (const ErrorText& e : kErrors)
    if (e.code == error) return &e;
  return nullptr;
}

Device* current() { return device(t_device); }

// Validates a device range [p, p + bytes) of a copy or memset.
bool device_range(const void* p, size_t bytes) {
  Allocation a;
  return find_allocation(p, bytes, &a) && a.device >= 0;
}

cudaError_t copy(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t handle, bool async) {
  CUstream_st* stream = resolve_stream(async ? handle : nullptr);
  if (stream == nullptr) return set_error(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  if (dst == nullptr || src == nullptr) return set_error(cudaErrorInvalidValue);
  const Lookup to = classify(dst), from = classify(src);
  if (kind == cudaMemcpyDefault) {
    const bool d = to == Lookup::Device, s = from == Lookup::Device;
    kind = d && s ? cudaMemcpyDeviceToDevice : d ? cudaMemcpyHostToDevice : s ? cudaMemcpyDeviceToHost
                                                                            : cudaMemcpyHostToHost;
  }
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDeviceToDevice)
    return set_error(cudaErrorInvalidMemcpyDirection);
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (dst_device ? !device_range(dst, count) : to == Lookup::Device) return set_error(cudaErrorInvalidValue);
  if (src_device ? !device_range(src, count) : from == Lookup::Device) return set_error(cudaErrorInvalidValue);
  // Pageable host memory: the runtime stages a host-to-device source at the call, and a copy to
  // pageable memory returns only once done. Page-locked memory is read / written when the copy runs.
  auto staged = std::make_shared<std::vector<unsigned char>>();
  if (!src_device && from != Lookup::Pinned) {
    const auto* bytes = static_cast<const unsigned char*>(src);
    staged->assign(bytes, bytes + count);
  }
  auto op = std::make_unique<Op>();
  op->what = "memcpy";
  op->run = [dst, src, count, staged] {
    std::memcpy(dst, staged->empty() ? src : staged->data(), count);
    return true;
  };
  Device* d = device(stream->device);
  const uint64_t seq = d->enqueue(stream, std::move(op));
  if (!async || (!dst_device && to != Lookup::Pinned)) d->wait(stream, seq);
  return cudaSuccess;
}

cudaError_t fill(void* p, int value, size_t count, cudaStream_t handle, bool async) {
  CUstream_st* stream = resolve_stream(async ? handle : nullptr);
  if (stream == nullptr) return set_error(cudaErrorInvalidResourceHandle);
  if (count == 0) return cudaSuccess;
  if (!device_range(p, count)) return set_error(cudaErrorInvalidValue);
  auto op = std::make_unique<Op>();
  op->what = "memset";
  op->run = [p, value, count] {
    std::memset(p, value, count);
    return true;
  };
  Device* d = device(stream->device);
  const uint64_t seq = d->enqueue(stream, std::move(op));
  if (!async) d->wait(stream, seq);
  return cudaSuccess;
}

}  // namespace

extern "C" {

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return set_error(cudaErrorInvalidValue);
  *count = device_count();
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int index) {
  if (index < 0 || index >= device_count()) return set_error(cudaErrorInvalidDevice);
  t_device = index;
  device(index);
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* index) {
  if (index == nullptr) return set_error(cudaErrorInvalidValue);
  *index = t_device;
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int index) {
  if (prop == nullptr) return set_error(cudaErrorInvalidValue);
  if (index < 0 || index >= device_count()) return set_error(cudaErrorInvalidDevice);
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof prop->name, "emulated H200 (CPU)");
  prop->totalGlobalMem = config().memory_bytes;
  prop->sharedMemPerBlock = kDefaultSharedLimit;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = kMaxThreadsPerBlock;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 0x7fffffff;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->totalConstMem = 65536;
  prop->major = 9;
  prop->minor = 0;
  prop->multiProcessorCount = 132;
  prop->memoryBusWidth = 6144;
  prop->l2CacheSize = 50 << 20;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->sharedMemPerMultiprocessor = 228 * 1024;
  prop->regsPerMultiprocessor = 65536;
  prop->sharedMemPerBlockOptin = config().shared_optin;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int index) {
  if (value == nullptr) return set_error(cudaErrorInvalidValue);
  if (index < 0 || index >= device_count()) return set_error(cudaErrorInvalidDevice);
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrMaxGridDimX: *value = 0x7fffffff; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = static_cast<int>(kDefaultSharedLimit); break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMultiProcessorCount: *value = 132; break;
    case cudaDevAttrMemoryClockRate: *value = 3125000; break;  // kHz: 4.8 TB/s over 6144 bits
    case cudaDevAttrGlobalMemoryBusWidth: *value = 6144; break;
    case cudaDevAttrL2CacheSize: *value = 50 << 20; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; break;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = 228 * 1024; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = static_cast<int>(config().shared_optin); break;
    default: return set_error(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  Device* d = current();
  if (d == nullptr) return set_error(cudaErrorInvalidDevice);
  d->synchronize();
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* version) {
  if (version == nullptr) return set_error(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* version) {
  if (version == nullptr) return set_error(cudaErrorInvalidValue);
  *version = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaGetLastError(void) {
  const cudaError_t error = t_last_error;
  t_last_error = cudaSuccess;
  return error;
}

cudaError_t cudaPeekAtLastError(void) { return t_last_error; }

const char* cudaGetErrorString(cudaError_t error) {
  const ErrorText* e = error_text(error);
  return e != nullptr ? e->text : "unrecognized error code";
}

const char* cudaGetErrorName(cudaError_t error) {
  const ErrorText* e = error_text(error);
  return e != nullptr ? e->name : "cudaErrorUnknown";
}

cudaError_t cudaMalloc(void** devPtr, size_t size) {
  if (current() == nullptr) return set_error(cudaErrorInvalidDevice);
  return allocate(devPtr, size, t_device);
}

cudaError_t cudaFree(void* devPtr) {
  if (devPtr == nullptr) return cudaSuccess;
  Allocation a;
  if (!find_allocation(devPtr, 0, &a) || a.begin != reinterpret_cast<uintptr_t>(devPtr) || a.device < 0)
    return set_error(cudaErrorInvalidValue);
  // cudaFree synchronises: no queued work may still use the memory.
  device(a.device)->synchronize();
  release_allocation(a);
  return cudaSuccess;
}

cudaError_t cudaMallocAsync(void** devPtr, size_t size, cudaStream_t handle) {
  CUstream_st* stream = resolve_stream(handle);
  if (stream == nullptr) return set_error(cudaErrorInvalidResourceHandle);
  return allocate(devPtr, size, stream->device);
}

cudaError_t cudaFreeAsync(void* devPtr, cudaStream_t handle) {
  CUstream_st* stream = resolve_stream(handle);
  if (stream == nullptr) return set_error(cudaErrorInvalidResourceHandle);
  if (devPtr == nullptr) return cudaSuccess;
  Allocation a;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    auto it = s.allocations.find(reinterpret_cast<uintptr_t>(devPtr));
    if (it == s.allocations.end() || it->second.free_pending || it->second.device < 0)
      return set_error(cudaErrorInvalidValue);
    it->second.free_pending = true;
    a = it->second;
  }
  auto op = std::make_unique<Op>();
  op->what = "cudaFreeAsync";
  op->run = [a] {
    release_allocation(a);
    return true;
  };
  device(stream->device)->enqueue(stream, std::move(op));
  return cudaSuccess;
}

cudaError_t cudaMallocHost(void** ptr, size_t size) { return allocate(ptr, size, -1); }

cudaError_t cudaFreeHost(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  Allocation a;
  if (!find_allocation(ptr, 0, &a) || a.begin != reinterpret_cast<uintptr_t>(ptr) || a.device >= 0)
    return set_error(cudaErrorInvalidValue);
  // As cudaFree, it synchronises: the current device (another device's collective may wait for
  // this thread; a pinned buffer used by another device's queued work is the caller's to order).
  current()->synchronize();
  release_allocation(a);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  Device* d = current();
  if (d == nullptr) return set_error(cudaErrorInvalidDevice);
  if (free == nullptr || total == nullptr) return set_error(cudaErrorInvalidValue);
  *total = config().memory_bytes;
  *free = config().memory_bytes - std::min(config().memory_bytes, d->live_bytes.load());
  return cudaSuccess;
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t count, cudaMemcpyKind kind) {
  return copy(dst, src, count, kind, nullptr, false);
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t count, cudaMemcpyKind kind, cudaStream_t stream) {
  return copy(dst, src, count, kind, stream, true);
}

cudaError_t cudaMemset(void* devPtr, int value, size_t count) { return fill(devPtr, value, count, nullptr, false); }

cudaError_t cudaMemsetAsync(void* devPtr, int value, size_t count, cudaStream_t stream) {
  return fill(devPtr, value, count, stream, true);
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, cudaStreamDefault); }

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int flags) {
  if (stream == nullptr || (flags & ~unsigned{cudaStreamNonBlocking}) != 0) return set_error(cudaErrorInvalidValue);
  Device* d = current();
  if (d == nullptr) return set_error(cudaErrorInvalidDevice);
  *stream = d->create_stream(flags);
  return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t handle) {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    if (handle == nullptr || s.streams.erase(handle) == 0) return set_error(cudaErrorInvalidResourceHandle);
  }
  device(handle->device)->destroy_stream(handle);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t handle) {
  CUstream_st* stream = resolve_stream(handle);
  if (stream == nullptr) return set_error(cudaErrorInvalidResourceHandle);
  device(stream->device)->wait_all(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamQuery(cudaStream_t handle) {
  CUstream_st* stream = resolve_stream(handle);
  if (stream == nullptr) return set_error(cudaErrorInvalidResourceHandle);
  return device(stream->device)->idle(stream) ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaStreamWaitEvent(cudaStream_t handle, cudaEvent_t event, unsigned int flags) {
  CUstream_st* stream = resolve_stream(handle);
  if (stream == nullptr || !valid_event(event)) return set_error(cudaErrorInvalidResourceHandle);
  if (flags != 0) return set_error(cudaErrorInvalidValue);
  State& s = state();
  CUstream_st* source = nullptr;
  uint64_t seq = 0;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    source = event->stream;
    seq = event->seq;
  }
  if (source == nullptr) return cudaSuccess;  // never recorded: nothing to wait for
  auto op = std::make_unique<Op>();
  op->what = "cudaStreamWaitEvent";
  op->deps.emplace_back(source, seq);
  op->run = [] { return true; };
  device(stream->device)->enqueue(stream, std::move(op));
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, cudaEventDefault); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int flags) {
  if (event == nullptr || (flags & ~unsigned{cudaEventBlockingSync | cudaEventDisableTiming}) != 0)
    return set_error(cudaErrorInvalidValue);
  if (current() == nullptr) return set_error(cudaErrorInvalidDevice);
  auto e = std::make_unique<CUevent_st>();
  e->device = t_device;
  e->flags = flags;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  *event = e.get();
  s.events.insert(e.get());
  s.event_storage.push_back(std::move(e));
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t handle) {
  CUstream_st* stream = resolve_stream(handle);
  if (stream == nullptr || !valid_event(event) || stream->device != event->device)
    return set_error(cudaErrorInvalidResourceHandle);
  auto op = std::make_unique<Op>();
  Op* self = op.get();
  op->what = "cudaEventRecord";
  op->run = [self, event, stream] {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (event->stream == stream && event->seq == self->seq) event->time_ms = now_ms();
    return true;
  };
  Device* d = device(stream->device);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);  // the record cannot run before the event names it
  event->seq = d->enqueue(stream, std::move(op));
  event->stream = stream;
  return cudaSuccess;
}

cudaError_t cudaEventQuery(cudaEvent_t event) {
  if (!valid_event(event)) return set_error(cudaErrorInvalidResourceHandle);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (event->stream == nullptr) return cudaSuccess;
  return event->stream->completed.load() >= event->seq ? cudaSuccess : cudaErrorNotReady;
}

cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  if (!valid_event(event)) return set_error(cudaErrorInvalidResourceHandle);
  CUstream_st* stream = nullptr;
  uint64_t seq = 0;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    stream = event->stream;
    seq = event->seq;
  }
  if (stream != nullptr) device(stream->device)->wait(stream, seq);
  return cudaSuccess;
}

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr) return set_error(cudaErrorInvalidValue);
  if (!valid_event(start) || !valid_event(end)) return set_error(cudaErrorInvalidResourceHandle);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if ((start->flags & cudaEventDisableTiming) != 0 || (end->flags & cudaEventDisableTiming) != 0 ||
      start->stream == nullptr || end->stream == nullptr)
    return set_error(cudaErrorInvalidResourceHandle);
  if (start->stream->completed.load() < start->seq || end->stream->completed.load() < end->seq)
    return set_error(cudaErrorNotReady);
  *ms = static_cast<float>(end->time_ms - start->time_ms);
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (event == nullptr || s.events.erase(event) == 0) return set_error(cudaErrorInvalidResourceHandle);
  return cudaSuccess;  // the object stays: queued operations may still refer to it
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  Device* d = current();
  if (d == nullptr) return set_error(cudaErrorInvalidDevice);
  if (func == nullptr) return set_error(cudaErrorInvalidDevicePointer);
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      if (value < 0 || static_cast<size_t>(value) > config().shared_optin) return set_error(cudaErrorInvalidValue);
      d->set_shared_limit(func, static_cast<size_t>(value));
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      if (value < -1 || value > 100) return set_error(cudaErrorInvalidValue);
      return cudaSuccess;
  }
  return set_error(cudaErrorInvalidValue);
}

cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, const void* func, int blockSize,
                                                          size_t dynamicSMemSize) {
  Device* d = current();
  if (d == nullptr) return set_error(cudaErrorInvalidDevice);
  if (numBlocks == nullptr || func == nullptr || blockSize <= 0) return set_error(cudaErrorInvalidValue);
  // An sm_90 multiprocessor: 64 warps, 32 blocks, 228 KB of shared memory (1 KB of it reserved per
  // block); registers are not modelled.
  if (blockSize > kMaxThreadsPerBlock || dynamicSMemSize > d->shared_limit(func)) {
    *numBlocks = 0;
    return cudaSuccess;
  }
  const int warps = (blockSize + 31) / 32;
  const int by_warps = 64 / warps;
  const int by_shared = static_cast<int>((228 * 1024) / (dynamicSMemSize + 1024));
  *numBlocks = std::max(0, std::min({by_warps, 32, by_shared}));
  return cudaSuccess;
}

}  // extern "C"
