// Internals of the CUDA emulation's runtime: configuration, emulated devices with their worker
// threads and streams, events, the registry of device allocations, and the helpers the API
// files share. Not part of the emulated API.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "cuda_runtime_api.h"
#include "dj_emu/launch.h"

namespace dj::emu {

// ---- configuration (environment, read once) -----------------------------------------------------
struct Config {
  int devices = 1;                   // DIJIANG_EMU_DEVICES
  size_t memory_bytes = 16ull << 30; // DIJIANG_EMU_MEMORY_GB
  size_t shared_optin = 227 * 1024;  // DIJIANG_EMU_SHARED_KB
  uint64_t seed = 1;                 // DIJIANG_EMU_SEED
  double nccl_timeout_s = 600;       // DIJIANG_EMU_NCCL_TIMEOUT_S
  bool cublaslt_no_algo = false;     // DIJIANG_EMU_CUBLASLT_NO_ALGO=1
};
const Config& config();

constexpr size_t kDefaultSharedLimit = 48 * 1024;
constexpr int kMaxThreadsPerBlock = 1024;

// Prints "cuda emulation: <message>" and ends the process (abort).
[[noreturn]] void fatal(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string strprintf(const char* format, ...) __attribute__((format(printf, 1, 2)));

// ---- per host thread ---------------------------------------------------------------------------
// Records `error` as the thread's last error (unless cudaSuccess) and returns it.
cudaError_t set_error(cudaError_t error);
void set_launch_detail(std::string detail);
int current_device();

// ---- device memory -------------------------------------------------------------------------------
struct Allocation {
  uintptr_t begin = 0;
  size_t size = 0;        // as requested
  size_t padded = 0;      // size rounded up to 256 bytes: [begin + size, begin + padded) is the canary
  int device = -1;        // -1: page-locked host memory (cudaMallocHost)
  void* map = nullptr;    // the whole mapping, guard pages included
  size_t map_bytes = 0;
  bool free_pending = false;  // cudaFreeAsync was called; freed in stream order
};

enum class Lookup { Device, Pinned, Host };

// Finds the live allocation holding [p, p + bytes) (bytes 0: p itself, or the end). Returns a copy.
bool find_allocation(const void* p, size_t bytes, Allocation* out, bool allow_pending_free = false);
// Device / pinned host / other memory.
Lookup classify(const void* p);
// Checks the canary bytes after every live allocation of `device`; returns "" or what was overwritten.
std::string check_canaries(int device);
// Describes where `address` lies relative to the allocations (for fault messages; may fail to lock).
std::string describe_address(uintptr_t address, bool may_lock);

// ---- streams, operations, events -------------------------------------------------------------------
class Device;

struct Op {
  const char* what = "";
  uint64_t seq = 0;
  std::vector<std::pair<CUstream_st*, uint64_t>> deps;  // (stream, seq) that must have completed
  // Runs the operation; false when it cannot complete (a failed collective): the stream stays
  // blocked until `release` is set.
  std::function<bool()> run;
  std::function<void()> on_complete;
  bool stuck = false;
  bool release = false;
};

}  // namespace dj::emu

struct CUstream_st {
  int device = 0;
  bool legacy = false;
  bool blocking = true;  // synchronises with the legacy stream
  bool destroyed = false;
  std::deque<std::unique_ptr<dj::emu::Op>> queue;
  uint64_t enqueued = 0;                // seq of the last operation queued
  std::atomic<uint64_t> completed{0};   // seq of the last operation completed
};

struct CUevent_st {
  int device = 0;
  unsigned flags = 0;
  CUstream_st* stream = nullptr;  // of the latest record (null: never recorded)
  uint64_t seq = 0;
  double time_ms = 0;             // host clock when the latest record executed
};

namespace dj::emu {

double now_ms();

class Device {
 public:
  explicit Device(int index);
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;

  const int index;
  CUstream_st* legacy_stream() { return legacy_; }

  // Queues `op` on `stream` (adds the legacy stream's implicit dependencies) and returns its seq.
  uint64_t enqueue(CUstream_st* stream, std::unique_ptr<Op> op);
  CUstream_st* create_stream(unsigned flags);
  void destroy_stream(CUstream_st* stream);
  // Host waits.
  void wait(CUstream_st* stream, uint64_t seq);
  void wait_all(CUstream_st* stream);  // everything queued on `stream` so far
  void synchronize();
  bool idle(CUstream_st* stream);
  // Wakes the worker (a dependency on another device completed, an operation was released).
  void notify();
  // Sets `release` on a stuck operation (under the queue lock) and wakes the worker.
  void release(Op* op);

  // Tests: the worker starts no operation while held.
  void hold(bool held);
  void reseed(uint64_t seed);

  // Dynamic shared memory limit per kernel (cudaFuncSetAttribute).
  size_t shared_limit(const void* function);
  void set_shared_limit(const void* function, size_t bytes);

  std::atomic<size_t> live_bytes{0};
  std::mt19937_64 rng;  // worker thread only

 private:
  void work();
  bool ready(const Op& op) const;

  std::mutex mutex_;
  std::condition_variable work_cv_, done_cv_;
  std::vector<CUstream_st*> streams_;  // live streams and destroyed ones with work left
  CUstream_st* legacy_ = nullptr;
  bool held_ = false;
  std::map<const void*, size_t> shared_limits_;
  std::thread worker_;
};

// Device `index` (created with its worker on first use); null when out of range.
Device* device(int index);
int device_count();
// Every created device (to wake them all).
void notify_all_devices();

// Resolves a stream handle (0, cudaStreamLegacy, cudaStreamPerThread: the legacy stream of the
// current device). Null for a handle that is not a live stream.
CUstream_st* resolve_stream(cudaStream_t stream);
bool valid_event(cudaEvent_t event);

// What the calling worker thread runs (for the fault handler's message).
extern __thread const char* current_operation;

// Runs a kernel launch on the calling worker thread (src/block.cpp).
void run_kernel(Device& device, const Launch& launch);
// Per worker thread: installs the fault handler's alternate stack.
void prepare_worker_thread();
void install_fault_handler();

// Called in a forked child: the parent's devices and workers do not exist there.
void reset_after_fork();

// ---- process-wide state (src/runtime.cpp; replaced in a forked child) ----------------------------
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

// The state, created on first use (with the fork handlers and the fault handler).
State& state();

// The calling host thread's current device (cudaSetDevice) and last error (cudaGetLastError).
extern thread_local int t_device;
extern thread_local cudaError_t t_last_error;

// Maps an allocation with guard pages, NaN-filled, with a canary after its end (device_index -1:
// page-locked host memory), or sets and returns the error.
cudaError_t allocate(void** out, size_t size, int device_index);
// Unmaps `a` and forgets it (the address range stays known for fault messages).
void release_allocation(const Allocation& a);

}  // namespace dj::emu
