// What device code sees under the CPU emulation: the CUDA C++ keywords, the built-in index
// variables (per emulated thread), barriers and warp-synchronous intrinsics, atomics, the device
// math intrinsics the kernels use, and the emulator's entry points for the PTX that
// kernels/cuda/dijiang_attention_device.cuh wraps (ldmatrix, mma.sync, cp.async).
//
// Every kernel thread is a fiber on its device's worker thread (tests/cuda_emulation/README.md);
// the index variables read the running fiber's record. Barriers and warp operations record
// their source location so that threads arriving at different ones are reported.
#pragma once
#include <math.h>

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "dj_emu/types.h"

// ---- keywords ----------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: one instance per device worker thread, on which a device runs its blocks
// one at a time, so every thread of a block sees the same variable. (Not poisoned per block:
// it starts zeroed and keeps the previous block's values.)
#define __shared__ static thread_local
#define __constant__ static

namespace dj::emu {

// The running emulated thread, as its kernel sees it.
struct ThreadInfo {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};

// Set by the scheduler before it resumes a thread's fiber.
extern __thread const ThreadInfo* current_thread;

inline const ThreadInfo& thread_info() { return *current_thread; }

// ---- emulator entry points (src/block.cpp) ------------------------------------------------------
void syncthreads(const char* file, int line);
void syncwarp(unsigned mask, const char* file, int line);
// Shuffles: kind 0 = idx, 1 = up, 2 = down, 3 = xor; value of at most 8 bytes.
uint64_t shuffle(unsigned mask, uint64_t value, int kind, int arg, int width, const char* file, int line);
// Votes: kind 0 = ballot, 1 = any, 2 = all.
unsigned vote(unsigned mask, int predicate, int kind, const char* file, int line);
unsigned active_mask();

unsigned char* dynamic_shared();
// Offset of p in the block's shared memory window (fatal when p is not shared memory).
uint32_t shared_address(const void* p, const char* what);

// ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16: r[0..count).
void ldmatrix(uint32_t* r, int count, bool trans, const void* row_address, const char* file, int line);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d, a, {b0, b1}, c.
void mma_m16n8k16_bf16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1, const float* c, const char* file,
                       int line);
// cp.async.cg.shared.global [dst], [src], cp_size, src_size; the bytes land at the wait covering
// their group.
void cp_async(void* dst, const void* src, int cp_size, int src_size);
void cp_async_commit();
void cp_async_wait_group(int pending);
void cp_async_wait_all();

}  // namespace dj::emu

#define threadIdx (::dj::emu::thread_info().thread_idx)
#define blockIdx (::dj::emu::thread_info().block_idx)
#define blockDim (::dj::emu::thread_info().block_dim)
#define gridDim (::dj::emu::thread_info().grid_dim)
inline constexpr int warpSize = 32;

// ---- barriers and warp-synchronous intrinsics ---------------------------------------------------
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  ::dj::emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  ::dj::emu::syncwarp(mask, file, line);
}

namespace dj::emu {
template <class T>
inline T shuffle_value(unsigned mask, T var, int kind, int arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffles move values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &var, sizeof(T));
  bits = shuffle(mask, bits, kind, arg, width, file, line);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}
}  // namespace dj::emu

template <class T>
inline T __shfl_sync(unsigned mask, T var, int srcLane, int width = 32, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  return ::dj::emu::shuffle_value(mask, var, 0, srcLane, width, file, line);
}
template <class T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                        int line = __builtin_LINE()) {
  return ::dj::emu::shuffle_value(mask, var, 1, static_cast<int>(delta), width, file, line);
}
template <class T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = 32, const char* file = __builtin_FILE(),
                          int line = __builtin_LINE()) {
  return ::dj::emu::shuffle_value(mask, var, 2, static_cast<int>(delta), width, file, line);
}
template <class T>
inline T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = 32, const char* file = __builtin_FILE(),
                         int line = __builtin_LINE()) {
  return ::dj::emu::shuffle_value(mask, var, 3, laneMask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return ::dj::emu::vote(mask, predicate, 0, file, line);
}
inline int __any_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::dj::emu::vote(mask, predicate, 1, file, line));
}
inline int __all_sync(unsigned mask, int predicate, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(::dj::emu::vote(mask, predicate, 2, file, line));
}
inline unsigned __activemask() { return ::dj::emu::active_mask(); }

// ---- shared-memory addresses --------------------------------------------------------------------
inline size_t __cvta_generic_to_shared(const void* p) {
  return ::dj::emu::shared_address(p, "__cvta_generic_to_shared");
}

// ---- atomics: the blocks of a device run one at a time on its worker thread and their threads
// switch only at barriers and warp operations, so a plain read-modify-write is atomic among them.
template <class T>
inline T dj_emu_atomic_add(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
inline float atomicAdd(float* address, float value) { return dj_emu_atomic_add(address, value); }
inline double atomicAdd(double* address, double value) { return dj_emu_atomic_add(address, value); }
inline int atomicAdd(int* address, int value) { return dj_emu_atomic_add(address, value); }
inline unsigned atomicAdd(unsigned* address, unsigned value) { return dj_emu_atomic_add(address, value); }
inline unsigned long long atomicAdd(unsigned long long* address, unsigned long long value) {
  return dj_emu_atomic_add(address, value);
}
inline int atomicMax(int* address, int value) {
  const int old = *address;
  if (value > old) *address = value;
  return old;
}
inline unsigned atomicMax(unsigned* address, unsigned value) {
  const unsigned old = *address;
  if (value > old) *address = value;
  return old;
}
inline int atomicMin(int* address, int value) {
  const int old = *address;
  if (value < old) *address = value;
  return old;
}
inline unsigned atomicMin(unsigned* address, unsigned value) {
  const unsigned old = *address;
  if (value < old) *address = value;
  return old;
}
template <class T>
inline T dj_emu_atomic_cas(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}
inline int atomicCAS(int* address, int compare, int value) { return dj_emu_atomic_cas(address, compare, value); }
inline unsigned atomicCAS(unsigned* address, unsigned compare, unsigned value) {
  return dj_emu_atomic_cas(address, compare, value);
}
inline unsigned long long atomicCAS(unsigned long long* address, unsigned long long compare,
                                    unsigned long long value) {
  return dj_emu_atomic_cas(address, compare, value);
}
template <class T>
inline T dj_emu_atomic_exch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
inline int atomicExch(int* address, int value) { return dj_emu_atomic_exch(address, value); }
inline unsigned atomicExch(unsigned* address, unsigned value) { return dj_emu_atomic_exch(address, value); }
inline float atomicExch(float* address, float value) { return dj_emu_atomic_exch(address, value); }

// ---- integer intrinsics -------------------------------------------------------------------------
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }

// ---- arithmetic with explicit rounding: IEEE round-to-nearest operations. The emulation is
// compiled with -ffp-contract=off, so none of them is fused with another. -----------------------
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }

// ---- fast-math intrinsics and functions libm lacks: accurate versions (the device's are
// approximations; results may differ in the last bits). --------------------------------------
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }

// ---- min / max: CUDA's overloads for device code --------------------------------------------------
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
