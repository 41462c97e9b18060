// Device helpers shared by the kernels of the model-op kernels of kernels/cuda (gemm.cu, layernorm.cu, ...) (nvcc only; not part of the API).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/cuda_check.h"

namespace dj::cuda::detail {

// ---- conversions: every value is computed in fp32; bf16 rounds to nearest even on store ----------
__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

template <typename T>
__device__ __forceinline__ T from_f64(double v);
template <>
__device__ __forceinline__ float from_f64<float>(double v) {
  return static_cast<float>(v);  // round to nearest, as the CPU's static_cast<float>
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f64<__nv_bfloat16>(double v) {
  return __double2bfloat16(v);  // one rounding, to nearest even
}

// ---- vector access: V consecutive values in one aligned load/store (16 bytes for V * sizeof(T)) --
template <typename T, int V>
struct alignas(sizeof(T) * V) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ Pack<T, V> load_pack(const T* p) {
  return *reinterpret_cast<const Pack<T, V>*>(p);
}
template <int V, typename T>
__device__ __forceinline__ void store_pack(T* p, const Pack<T, V>& pack) {
  *reinterpret_cast<Pack<T, V>*>(p) = pack;
}

// Values of T per 16-byte access.
template <typename T>
constexpr int kVec16 = static_cast<int>(16 / sizeof(T));

inline bool aligned(const void* p, size_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % bytes == 0;
}

// ---- reductions ---------------------------------------------------------------------------------
// Butterfly sums: every lane ends with the same value, formed in the same order on every run.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block of `v` (blockDim.x a multiple of 32, at most 1024; `scratch` holds 32
// values). Every thread returns the same total, formed in a fixed order (warp butterflies, then the
// warp sums in warp order). Every thread of the block must call it (it holds two barriers); the
// leading barrier lets consecutive calls share `scratch`.
template <typename A>
__device__ __forceinline__ A block_sum(A v, A* scratch) {
  v = warp_sum(v);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  A total = scratch[0];
  for (int w = 1; w < warps; ++w) total += scratch[w];
  return total;
}

// ---- launch shapes ------------------------------------------------------------------------------
// Grid-stride kernels take at most this many blocks: 1024 blocks of 256 threads are ~2 waves of
// resident threads on a 132-SM H200, enough to saturate memory, and the count depends on nothing
// but the problem size.
constexpr int64_t kMaxGridStrideBlocks = 1024;

inline unsigned grid_for(int64_t work, int threads, int64_t cap = kMaxGridStrideBlocks) {
  const int64_t blocks = (work + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(blocks, cap)));
}

}  // namespace dj::cuda::detail
