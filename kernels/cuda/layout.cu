// One thread per value; the index arithmetic maps each destination value to its source, so reads
// of a head's d values stay contiguous (coalesced) on both sides.
#include "kernels/cuda/layout.h"

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Index i runs over the [B, H, S, d] head layout; `fused` is the offset of the value in the
// [B, S, H, 3, d] row (part 0, 1, 2 = q, k, v add part * d).
__device__ __forceinline__ int64_t fused_offset(int64_t i, int64_t S, int64_t H, int64_t d) {
  const int64_t c = i % d, s = (i / d) % S, h = (i / (d * S)) % H, b = i / (d * S * H);
  return ((b * S + s) * H + h) * 3 * d + c;
}

template <typename T>
__global__ void split_qkv_kernel(T* q, T* k, T* v, const T* qkv, int64_t n, int64_t S, int64_t H, int64_t d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t f = fused_offset(i, S, H, d);
  q[i] = qkv[f];
  k[i] = qkv[f + d];
  v[i] = qkv[f + 2 * d];
}

template <typename T>
__global__ void join_qkv_kernel(T* qkv, const T* q, const T* k, const T* v, int64_t n, int64_t S, int64_t H,
                                int64_t d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int64_t f = fused_offset(i, S, H, d);
  qkv[f] = q[i];
  qkv[f + d] = k[i];
  qkv[f + 2 * d] = v[i];
}

// i over the merged [B, S, H, d] layout; returns the [B, H, S, d] offset of the same value.
__device__ __forceinline__ int64_t head_offset(int64_t i, int64_t S, int64_t H, int64_t d) {
  const int64_t c = i % d, h = (i / d) % H, s = (i / (d * H)) % S, b = i / (d * H * S);
  return ((b * H + h) * S + s) * d + c;
}

template <typename T>
__global__ void merge_heads_kernel(T* merged, const T* heads, int64_t n, int64_t S, int64_t H, int64_t d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) merged[i] = heads[head_offset(i, S, H, d)];
}

template <typename T>
__global__ void split_heads_kernel(T* heads, const T* merged, int64_t n, int64_t S, int64_t H, int64_t d) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) heads[head_offset(i, S, H, d)] = merged[i];
}

template <typename T>
__global__ void add_kernel(T* out, const T* a, const T* b, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = detail::from_f32<T>(detail::to_f32(a[i]) + detail::to_f32(b[i]));
}

template <typename T>
__global__ void add3_kernel(T* out, const T* x, const T* b, const T* c, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = detail::from_f32<T>(detail::to_f32(x[i]) + (detail::to_f32(b[i]) + detail::to_f32(c[i])));
}

}  // namespace

template <typename T>
void split_qkv(T* q, T* k, T* v, const T* qkv, int64_t B, int64_t S, int64_t H, int64_t d, cudaStream_t stream) {
  const int64_t n = B * H * S * d;
  if (n == 0) return;
  launch("split_qkv_kernel", split_qkv_kernel<T>, blocks_for(n), kThreads, 0, stream, q, k, v, qkv, n, S, H, d);
}

template <typename T>
void join_qkv(T* qkv, const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H, int64_t d,
              cudaStream_t stream) {
  const int64_t n = B * H * S * d;
  if (n == 0) return;
  launch("join_qkv_kernel", join_qkv_kernel<T>, blocks_for(n), kThreads, 0, stream, qkv, q, k, v, n, S, H, d);
}

template <typename T>
void merge_heads(T* merged, const T* heads, int64_t B, int64_t S, int64_t H, int64_t d, cudaStream_t stream) {
  const int64_t n = B * H * S * d;
  if (n == 0) return;
  launch("merge_heads_kernel", merge_heads_kernel<T>, blocks_for(n), kThreads, 0, stream, merged, heads, n, S, H, d);
}

template <typename T>
void split_heads(T* heads, const T* merged, int64_t B, int64_t S, int64_t H, int64_t d, cudaStream_t stream) {
  const int64_t n = B * H * S * d;
  if (n == 0) return;
  launch("split_heads_kernel", split_heads_kernel<T>, blocks_for(n), kThreads, 0, stream, heads, merged, n, S, H, d);
}

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch("add_kernel", add_kernel<T>, blocks_for(n), kThreads, 0, stream, out, a, b, n);
}

template <typename T>
void add3(T* out, const T* x, const T* b, const T* c, int64_t n, cudaStream_t stream) {
  if (n == 0) return;
  launch("add3_kernel", add3_kernel<T>, blocks_for(n), kThreads, 0, stream, out, x, b, c, n);
}

#define DJ_LAYOUT_INSTANTIATE(T)                                                                              \
  template void split_qkv<T>(T*, T*, T*, const T*, int64_t, int64_t, int64_t, int64_t, cudaStream_t);         \
  template void join_qkv<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, cudaStream_t); \
  template void merge_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, cudaStream_t);                \
  template void split_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t, cudaStream_t);                \
  template void add<T>(T*, const T*, const T*, int64_t, cudaStream_t);                                         \
  template void add3<T>(T*, const T*, const T*, const T*, int64_t, cudaStream_t);
DJ_LAYOUT_INSTANTIATE(float)
DJ_LAYOUT_INSTANTIATE(__nv_bfloat16)
#undef DJ_LAYOUT_INSTANTIATE

}  // namespace dj::cuda
