// Incremental decoding kernels (decode.h).
//
// cached_attention_step: one block of 256 threads per row (batch × head). The block walks the
// cache in tiles of 64 keys with an online softmax: each warp forms the scores of 8 keys (lanes
// over the head's columns, a butterfly sum), warp 0 takes the tile's maximum, 64 threads turn the
// scores into weights, and each thread keeps the running output of its column(s) (d <= 512: at
// most two per thread), rescaled when the maximum grows. Reads of q, k and v are coalesced across
// the lanes; the cache is read once. Everything is fp32 in an order fixed by the shape alone.
//
// copy_rows: a grid-stride copy of rows × width values between strided rows.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/decode.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

using detail::from_f32;
using detail::to_f32;
using detail::warp_sum;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 64;
constexpr int kKeysPerWarp = kTile / kWarps;
constexpr int kMaxCols = static_cast<int>(kMaxCachedAttentionDim / kThreads);

template <typename T>
__global__ void __launch_bounds__(kThreads)
    cached_attention_kernel(T* o, const T* q, const T* k_cache, const T* v_cache, int64_t len, int64_t capacity,
                            int d, float scale) {
  __shared__ float qs[kMaxCachedAttentionDim];
  __shared__ float scores[kTile];
  __shared__ float tile_max;
  const int64_t bh = blockIdx.x;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const T* K = k_cache + bh * capacity * d;
  const T* V = v_cache + bh * capacity * d;
  for (int c = tid; c < d; c += kThreads) qs[c] = to_f32(q[bh * d + c]);
  float acc[kMaxCols];
#pragma unroll
  for (int i = 0; i < kMaxCols; ++i) acc[i] = 0.f;
  float run_max = -INFINITY, run_sum = 0.f;
  __syncthreads();
  for (int64_t t0 = 0; t0 < len; t0 += kTile) {
    // Scores of the tile's keys (−inf past the end).
    for (int i = 0; i < kKeysPerWarp; ++i) {
      const int r = warp * kKeysPerWarp + i;
      const int64_t j = t0 + r;
      float dot = 0.f;
      if (j < len)
        for (int c = lane; c < d; c += 32) dot += qs[c] * to_f32(K[j * d + c]);
      dot = warp_sum(dot);
      if (lane == 0) scores[r] = j < len ? scale * dot : -INFINITY;
    }
    __syncthreads();
    if (warp == 0) {
      float m = fmaxf(scores[lane], scores[lane + 32]);
#pragma unroll
      for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
      if (lane == 0) tile_max = m;
    }
    __syncthreads();
    const float new_max = fmaxf(run_max, tile_max);
    __syncthreads();  // every thread has read tile_max
    if (tid < kTile) scores[tid] = expf(scores[tid] - new_max);  // exp(−inf) = 0 past the end
    __syncthreads();
    const float correction = expf(run_max - new_max);  // 0 on the first tile (run_max = −inf)
    const int keys = static_cast<int>(len - t0 < kTile ? len - t0 : kTile);
    float tile_sum = 0.f;
    for (int r = 0; r < keys; ++r) tile_sum += scores[r];
    run_sum = run_sum * correction + tile_sum;
#pragma unroll
    for (int i = 0; i < kMaxCols; ++i) {
      const int c = tid + i * kThreads;
      if (c >= d) break;
      float a = acc[i] * correction;
      for (int r = 0; r < keys; ++r) a += scores[r] * to_f32(V[(t0 + r) * d + c]);
      acc[i] = a;
    }
    run_max = new_max;
    __syncthreads();  // the next tile overwrites the scores
  }
  const float inv = 1.f / run_sum;
#pragma unroll
  for (int i = 0; i < kMaxCols; ++i) {
    const int c = tid + i * kThreads;
    if (c < d) o[bh * d + c] = from_f32<T>(acc[i] * inv);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    copy_rows_kernel(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows, int64_t width) {
  const int64_t total = rows * width;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t r = idx / width, c = idx - r * width;
    dst[r * dst_stride + c] = src[r * src_stride + c];
  }
}

}  // namespace

template <typename T>
void cached_attention_step(T* o, const T* q, const T* k_cache, const T* v_cache, int64_t BH, int64_t len,
                           int64_t capacity, int64_t d, double scale, cudaStream_t stream) {
  if (BH < 0 || d < 1 || d > kMaxCachedAttentionDim || len < 1 || len > capacity)
    throw std::invalid_argument("cached_attention_step: invalid shape (BH " + std::to_string(BH) + ", len " +
                                std::to_string(len) + ", capacity " + std::to_string(capacity) + ", d " +
                                std::to_string(d) + ")");
  if (BH == 0) return;
  launch("cached_attention_kernel", cached_attention_kernel<T>, static_cast<unsigned>(BH), kThreads, 0, stream, o, q,
         k_cache, v_cache, len, capacity, static_cast<int>(d), static_cast<float>(scale));
}

template <typename T>
void copy_rows(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows, int64_t width,
               cudaStream_t stream) {
  if (rows <= 0 || width <= 0) return;
  launch("copy_rows_kernel", copy_rows_kernel<T>, detail::grid_for(rows * width, kThreads), kThreads, 0, stream, dst,
         dst_stride, src, src_stride, rows, width);
}

template void cached_attention_step<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                           int64_t, double, cudaStream_t);
template void cached_attention_step<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
                                                   const __nv_bfloat16*, int64_t, int64_t, int64_t, int64_t, double,
                                                   cudaStream_t);
template void copy_rows<float>(float*, int64_t, const float*, int64_t, int64_t, int64_t, cudaStream_t);
template void copy_rows<__nv_bfloat16>(__nv_bfloat16*, int64_t, const __nv_bfloat16*, int64_t, int64_t, int64_t,
                                       cudaStream_t);

}  // namespace dj::cuda
