// The CUDA runtime of the emulation: configuration, devices and their worker threads, streams
// and events, device memory (guard pages, NaN poisoning, canaries), copies, launches and error
// reporting. Kernel execution itself is in block.cpp.
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <initializer_list>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "dj_emu/control.h"
#include "internal.h"

namespace dj::emu {

// ---- configuration -----------------------------------------------------------------------------

namespace {

double env_number(const char* name, double fallback, double lo, double hi) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  char* end = nullptr;
  const double value = std::strtod(text, &end);
  if (end == text || *end != '\0' || !(value >= lo && value <= hi))
    fatal("%s=%s is not a number in [%g, %g]", name, text, lo, hi);
  return value;
}

}  // namespace

const Config& config() {
  static const Config c = [] {
    Config cfg;
    cfg.devices = static_cast<int>(env_number("DIJIANG_EMU_DEVICES", 1, 1, 64));
    cfg.memory_bytes = static_cast<size_t>(env_number("DIJIANG_EMU_MEMORY_GB", 16, 0.001, 1 << 20) * (1ull << 30));
    cfg.shared_optin = static_cast<size_t>(env_number("DIJIANG_EMU_SHARED_KB", 227, 48, 1024)) * 1024;
    cfg.seed = static_cast<uint64_t>(env_number("DIJIANG_EMU_SEED", 1, 0, 9007199254740992.0));
    cfg.nccl_timeout_s = env_number("DIJIANG_EMU_NCCL_TIMEOUT_S", 600, 0.01, 1e9);
    const char* no_algo = std::getenv("DIJIANG_EMU_CUBLASLT_NO_ALGO");
    cfg.cublaslt_no_algo = no_algo != nullptr && std::strcmp(no_algo, "1") == 0;
    return cfg;
  }();
  return c;
}

void fatal(const char* format, ...) {
  char message[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(message, sizeof message, format, args);
  va_end(args);
  std::fflush(stdout);
  std::fprintf(stderr, "cuda emulation: %s\n", message);
  std::fflush(stderr);
  std::abort();
}

std::string strprintf(const char* format, ...) {
  char buffer[2048];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  return buffer;
}

double now_ms() {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// ---- process-wide state (replaced in a forked child) ----------------------------------------------

namespace {

struct FreedRange {
  uintptr_t begin = 0;
  size_t size = 0;
};

struct State {
  std::mutex mutex;  // allocations, stream and event handles, event fields, devices
  std::map<uintptr_t, Allocation> allocations;
  FreedRange freed[64];
  size_t freed_next = 0;
  std::unordered_set<CUstream_st*> streams;
  std::unordered_set<CUevent_st*> events;
  std::vector<std::unique_ptr<Device>> devices;
  std::vector<std::unique_ptr<CUstream_st>> stream_storage;  // never freed: events and waits refer to them
  std::vector<std::unique_ptr<CUevent_st>> event_storage;
};

std::mutex g_state_mutex;
State* g_state = nullptr;

void fork_prepare() { g_state_mutex.lock(); }
void fork_parent() { g_state_mutex.unlock(); }
void fork_child() {
  g_state_mutex.unlock();
  reset_after_fork();
}

State& state() {
  std::lock_guard<std::mutex> lock(g_state_mutex);
  if (g_state == nullptr) {
    static bool once = [] {
      pthread_atfork(fork_prepare, fork_parent, fork_child);
      install_fault_handler();
      return true;
    }();
    (void)once;
    g_state = new State();  // never destroyed: detached workers may run until the process ends
    g_state->devices.resize(static_cast<size_t>(config().devices));
  }
  return *g_state;
}

thread_local int t_device = 0;
thread_local cudaError_t t_last_error = cudaSuccess;
thread_local std::string t_launch_detail;

size_t page_size() {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return page;
}
size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

}  // namespace

void reset_after_fork() {
  g_state = nullptr;  // the parent's state (and its locks, held by threads that do not exist here) is abandoned
  t_device = 0;
}

cudaError_t set_error(cudaError_t error) {
  if (error != cudaSuccess) t_last_error = error;
  return error;
}

void set_launch_detail(std::string detail) { t_launch_detail = std::move(detail); }

std::string take_launch_detail() {
  std::string detail;
  detail.swap(t_launch_detail);
  return detail;
}

int current_device() { return t_device; }

int device_count() { return config().devices; }

Device* device(int index) {
  if (index < 0 || index >= device_count()) return nullptr;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  auto& slot = s.devices[static_cast<size_t>(index)];
  if (!slot) slot = std::make_unique<Device>(index);
  return slot.get();
}

void notify_all_devices() {
  State& s = state();
  std::vector<Device*> all;
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    for (auto& d : s.devices)
      if (d) all.push_back(d.get());
  }
  for (Device* d : all) d->notify();
}

// ---- devices -------------------------------------------------------------------------------------

Device::Device(int i) : index(i) {
  reseed(config().seed);
  legacy_ = new CUstream_st();  // lives as long as the device
  legacy_->device = i;
  legacy_->legacy = true;
  legacy_->blocking = false;
  streams_.push_back(legacy_);
  worker_ = std::thread([this] { work(); });
  worker_.detach();
}

uint64_t Device::enqueue(CUstream_st* stream, std::unique_ptr<Op> op) {
  std::lock_guard<std::mutex> lock(mutex_);
  // The legacy default stream waits for all blocking streams, and they wait for it.
  if (stream->legacy) {
    for (CUstream_st* s : streams_)
      if (!s->legacy && s->blocking && s->enqueued > s->completed.load()) op->deps.emplace_back(s, s->enqueued);
  } else if (stream->blocking && legacy_->enqueued > legacy_->completed.load()) {
    op->deps.emplace_back(legacy_, legacy_->enqueued);
  }
  op->seq = ++stream->enqueued;
  const uint64_t seq = op->seq;
  stream->queue.push_back(std::move(op));
  work_cv_.notify_one();
  return seq;
}

CUstream_st* Device::create_stream(unsigned flags) {
  auto stream = std::make_unique<CUstream_st>();
  stream->device = index;
  stream->blocking = (flags & cudaStreamNonBlocking) == 0;
  CUstream_st* raw = stream.get();
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.stream_storage.push_back(std::move(stream));
    s.streams.insert(raw);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  streams_.push_back(raw);
  return raw;
}

void Device::destroy_stream(CUstream_st* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  stream->destroyed = true;
  if (stream->queue.empty()) streams_.erase(std::remove(streams_.begin(), streams_.end(), stream), streams_.end());
}

bool Device::ready(const Op& op) const {
  for (const auto& [stream, seq] : op.deps)
    if (stream->completed.load() < seq) return false;
  return true;
}

void Device::work() {
  prepare_worker_thread();
  std::unique_lock<std::mutex> lock(mutex_);
  std::vector<CUstream_st*> candidates;
  for (;;) {
    candidates.clear();
    if (!held_) {
      for (CUstream_st* s : streams_) {
        if (s->queue.empty()) continue;
        const Op& op = *s->queue.front();
        if (op.release || (!op.stuck && ready(op))) candidates.push_back(s);
      }
    }
    if (candidates.empty()) {
      work_cv_.wait(lock);
      continue;
    }
    // Among the streams whose next operation may start, any may go first on a GPU.
    CUstream_st* s = candidates.size() == 1 ? candidates[0] : candidates[rng() % candidates.size()];
    Op* op = s->queue.front().get();
    bool done = op->release;
    if (!done) {
      lock.unlock();
      current_operation = op->what;
      done = op->run();
      current_operation = nullptr;
      lock.lock();
      done = done || op->release;
    }
    if (!done) {
      op->stuck = true;
      continue;
    }
    std::unique_ptr<Op> owned = std::move(s->queue.front());
    s->queue.pop_front();
    s->completed.store(owned->seq);
    if (s->destroyed && s->queue.empty())
      streams_.erase(std::remove(streams_.begin(), streams_.end(), s), streams_.end());
    done_cv_.notify_all();
    lock.unlock();
    if (owned->on_complete) owned->on_complete();
    owned.reset();
    if (device_count() > 1) notify_all_devices();  // operations of other devices may wait for this one
    lock.lock();
  }
}

void Device::wait(CUstream_st* stream, uint64_t seq) {
  std::unique_lock<std::mutex> lock(mutex_);
  done_cv_.wait(lock, [&] { return stream->completed.load() >= seq; });
}

void Device::wait_all(CUstream_st* stream) {
  std::unique_lock<std::mutex> lock(mutex_);
  const uint64_t seq = stream->enqueued;
  done_cv_.wait(lock, [&] { return stream->completed.load() >= seq; });
}

void Device::synchronize() {
  std::unique_lock<std::mutex> lock(mutex_);
  std::vector<std::pair<CUstream_st*, uint64_t>> targets;
  for (CUstream_st* s : streams_) targets.emplace_back(s, s->enqueued);
  done_cv_.wait(lock, [&] {
    for (const auto& [s, seq] : targets)
      if (s->completed.load() < seq) return false;
    return true;
  });
}

bool Device::idle(CUstream_st* stream) {
  std::lock_guard<std::mutex> lock(mutex_);
  return stream->completed.load() >= stream->enqueued;
}

void Device::notify() {
  std::lock_guard<std::mutex> lock(mutex_);
  work_cv_.notify_all();
}

void Device::release(Op* op) {
  std::lock_guard<std::mutex> lock(mutex_);
  op->release = true;
  work_cv_.notify_all();
}

void Device::reseed(uint64_t seed) {
  std::lock_guard<std::mutex> lock(mutex_);
  rng.seed(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(index));
}

void Device::hold(bool held) {
  std::lock_guard<std::mutex> lock(mutex_);
  held_ = held;
  work_cv_.notify_all();
}

size_t Device::shared_limit(const void* function) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = shared_limits_.find(function);
  return it == shared_limits_.end() ? kDefaultSharedLimit : it->second;
}

void Device::set_shared_limit(const void* function, size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  shared_limits_[function] = bytes;
}

void hold_device(int index, bool held) {
  if (Device* d = device(index)) d->hold(held);
}

void reseed_device(int index, uint64_t seed) {
  if (Device* d = device(index)) d->reseed(seed);
}

CUstream_st* resolve_stream(cudaStream_t stream) {
  if (stream == nullptr || stream == cudaStreamLegacy || stream == cudaStreamPerThread) {
    Device* d = device(t_device);
    return d == nullptr ? nullptr : d->legacy_stream();
  }
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.streams.count(stream) != 0 ? stream : nullptr;
}

bool valid_event(cudaEvent_t event) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.events.count(event) != 0;
}

// ---- allocations -------------------------------------------------------------------------------------

namespace {

bool contains(const Allocation& a, uintptr_t p, size_t bytes) {
  if (bytes == 0) return p >= a.begin && p <= a.begin + a.size;
  return p >= a.begin && p + bytes <= a.begin + a.size && p + bytes >= p;
}

const Allocation* find_locked(State& s, uintptr_t p, size_t bytes) {
  auto it = s.allocations.upper_bound(p);
  if (it == s.allocations.begin()) return nullptr;
  --it;
  return contains(it->second, p, bytes) ? &it->second : nullptr;
}

cudaError_t allocate(void** out, size_t size, int device_index) {
  if (out == nullptr) return set_error(cudaErrorInvalidValue);
  if (size == 0) {
    *out = nullptr;
    return cudaSuccess;
  }
  Device* d = device_index >= 0 ? device(device_index) : nullptr;
  if (device_index >= 0 && d == nullptr) return set_error(cudaErrorInvalidDevice);
  const size_t page = page_size();
  const size_t padded = round_up(size, 256);
  const size_t body = round_up(padded, page);
  const size_t map_bytes = body + 2 * page;
  State& s = state();
  if (d != nullptr) {
    size_t live = d->live_bytes.load();
    do {
      if (size > config().memory_bytes || live > config().memory_bytes - size)
        return set_error(cudaErrorMemoryAllocation);
    } while (!d->live_bytes.compare_exchange_weak(live, live + size));
  }
  void* map = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (map == MAP_FAILED) {
    if (d != nullptr) d->live_bytes -= size;
    return set_error(cudaErrorMemoryAllocation);
  }
  auto* base = static_cast<unsigned char*>(map);
  mprotect(base, page, PROT_NONE);
  mprotect(base + page + body, page, PROT_NONE);
  Allocation a;
  a.begin = reinterpret_cast<uintptr_t>(base + page + (body - padded));
  a.size = size;
  a.padded = padded;
  a.device = device_index;
  a.map = map;
  a.map_bytes = map_bytes;
  std::memset(reinterpret_cast<void*>(a.begin), 0xFF, padded);  // NaN everywhere, canary after the end
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.allocations[a.begin] = a;
  }
  *out = reinterpret_cast<void*>(a.begin);
  return cudaSuccess;
}

void release_allocation(const Allocation& a) {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mutex);
    s.allocations.erase(a.begin);
    s.freed[s.freed_next++ % std::size(s.freed)] = FreedRange{a.begin, a.size};
  }
  munmap(a.map, a.map_bytes);
  if (a.device >= 0) {
    if (Device* d = device(a.device)) d->live_bytes -= a.size;
  }
}

}  // namespace

bool find_allocation(const void* p, size_t bytes, Allocation* out, bool allow_pending_free) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const Allocation* a = find_locked(s, reinterpret_cast<uintptr_t>(p), bytes);
  if (a == nullptr || (a->free_pending && !allow_pending_free)) return false;
  if (out != nullptr) *out = *a;
  return true;
}

Lookup classify(const void* p) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const Allocation* a = find_locked(s, reinterpret_cast<uintptr_t>(p), 0);
  if (a == nullptr) return Lookup::Host;
  return a->device < 0 ? Lookup::Pinned : Lookup::Device;
}

std::string check_canaries(int device_index) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  for (const auto& [begin, a] : s.allocations) {
    if (a.device != device_index) continue;
    const auto* tail = reinterpret_cast<const unsigned char*>(a.begin + a.size);
    for (size_t i = 0; i < a.padded - a.size; ++i) {
      if (tail[i] != 0xFF) {
        const std::string what =
            strprintf("the %zu-byte allocation at %p was written past its end (byte %zu after it)", a.size,
                      reinterpret_cast<void*>(a.begin), i);
        std::memset(const_cast<unsigned char*>(tail), 0xFF, a.padded - a.size);  // report once
        return what;
      }
    }
  }
  return "";
}

std::string describe_address(uintptr_t address, bool may_lock) {
  State* s = g_state;
  if (s == nullptr) return "";
  std::unique_lock<std::mutex> lock(s->mutex, std::defer_lock);
  if (may_lock) {
    lock.lock();
  } else if (!lock.try_lock()) {
    return "";
  }
  const uintptr_t page = page_size();
  for (const auto& [begin, a] : s->allocations) {
    const auto map = reinterpret_cast<uintptr_t>(a.map);
    if (address < map || address >= map + a.map_bytes) continue;
    if (address < map + page)
      return strprintf("in the guard page before the %zu-byte allocation at %p (%zu bytes before it)", a.size,
                       reinterpret_cast<void*>(a.begin), static_cast<size_t>(a.begin - address));
    return strprintf("%zu bytes past the end of the %zu-byte allocation at %p", static_cast<size_t>(address - (a.begin + a.size)),
                     a.size, reinterpret_cast<void*>(a.begin));
  }
  for (const FreedRange& f : s->freed)
    if (f.size != 0 && address >= f.begin && address < f.begin + f.size)
      return strprintf("in a freed %zu-byte allocation that was at %p", f.size, reinterpret_cast<void*>(f.begin));
  return "";
}

// ---- launches ------------------------------------------------------------------------------------

namespace {

cudaError_t launch_failure(cudaError_t error, std::string detail) {
  t_launch_detail = std::move(detail);
  return set_error(error);
}

// "" when a kernel of device `dev` may use `p` (live memory of that device, or page-locked host
// memory, which kernels reach through unified addressing); otherwise why not.
std::string describe_pointer(const void* p, int dev) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  const auto address = reinterpret_cast<uintptr_t>(p);
  if (const Allocation* a = find_locked(s, address, 0)) {
    if (a->free_pending) return "its allocation was freed with cudaFreeAsync";
    if (a->device >= 0 && a->device != dev) return strprintf("it is memory of device %d", a->device);
    return "";
  }
  for (const FreedRange& f : s.freed)
    if (f.size != 0 && address >= f.begin && address < f.begin + f.size) return "its allocation was freed";
  return "it is not device memory (host memory?)";
}

}  // namespace

cudaError_t launch(Launch&& l) {
  t_launch_detail.clear();
  const int dev = t_device;
  Device* d = device(dev);
  if (d == nullptr) return launch_failure(cudaErrorInvalidDevice, strprintf("kernel %s: no device %d", l.name, dev));
  CUstream_st* s = resolve_stream(l.stream);
  if (s == nullptr)
    return launch_failure(cudaErrorInvalidResourceHandle, strprintf("kernel %s: not a live stream", l.name));
  if (s->device != dev)
    return launch_failure(cudaErrorInvalidResourceHandle,
                          strprintf("kernel %s: the stream belongs to device %d, the current device is %d", l.name,
                                    s->device, dev));
  const uint64_t threads = uint64_t{l.block.x} * l.block.y * l.block.z;
  if (l.block.x == 0 || l.block.y == 0 || l.block.z == 0 || threads > kMaxThreadsPerBlock || l.block.x > 1024 ||
      l.block.y > 1024 || l.block.z > 64)
    return launch_failure(cudaErrorInvalidConfiguration,
                          strprintf("kernel %s: block (%u, %u, %u) (at most 1024 threads; x, y <= 1024, z <= 64)",
                                    l.name, l.block.x, l.block.y, l.block.z));
  if (l.grid.x == 0 || l.grid.y == 0 || l.grid.z == 0 || l.grid.x > 0x7fffffffu || l.grid.y > 65535 ||
      l.grid.z > 65535)
    return launch_failure(cudaErrorInvalidConfiguration,
                          strprintf("kernel %s: grid (%u, %u, %u) (x < 2^31, y, z <= 65535, none 0)", l.name, l.grid.x,
                                    l.grid.y, l.grid.z));
  const size_t limit = d->shared_limit(l.function);
  if (l.shared_bytes > limit)
    return launch_failure(cudaErrorInvalidValue,
                          strprintf("kernel %s: %zu bytes of dynamic shared memory, above its limit of %zu (48 KB "
                                    "unless raised with cudaFuncSetAttribute)",
                                    l.name, l.shared_bytes, limit));
  if (l.shared_bytes > config().shared_optin)
    return launch_failure(cudaErrorInvalidValue,
                          strprintf("kernel %s: %zu bytes of dynamic shared memory, above the device's %zu",
                                    l.name, l.shared_bytes, config().shared_optin));
  for (const auto& [index, pointer] : l.pointers) {
    if (pointer == nullptr) continue;
    const std::string why = describe_pointer(pointer, dev);
    if (!why.empty())
      return launch_failure(cudaErrorInvalidValue,
                            strprintf("kernel %s: argument %d (%p) points into no live allocation of device %d: %s; "
                                      "on a GPU it would fault",
                                      l.name, index, pointer, dev, why.c_str()));
  }
  auto shared = std::make_shared<const Launch>(std::move(l));
  auto op = std::make_unique<Op>();
  op->what = shared->name;
  op->run = [d, shared] {
    run_kernel(*d, *shared);
    return true;
  };
  d->enqueue(s, std::move(op));
  return cudaSuccess;
}

}  // namespace dj::emu

// ---- the C API ---------------------------------------------------------------------------------------

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
