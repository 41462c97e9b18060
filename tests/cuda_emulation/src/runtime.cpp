// The CUDA runtime of the emulation: configuration, the process-wide state, devices and their
// worker threads, device memory (guard pages, NaN poisoning, canaries) and launches. The C API over
// them is in runtime_api.cpp; kernel execution itself in block.cpp.
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

std::mutex g_state_mutex;
State* g_state = nullptr;

void fork_prepare() { g_state_mutex.lock(); }
void fork_parent() { g_state_mutex.unlock(); }
void fork_child() {
  g_state_mutex.unlock();
  reset_after_fork();
}

}  // namespace

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

namespace {

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

}  // namespace

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
