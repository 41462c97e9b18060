// Feature maps of the linear-attention baselines and their normalisation on the GPU
// (kernels/cuda/linear_attention.h). These are plain kernels, written for correctness first: one
// block of 128 threads per row for the feature maps (the performer's projection is d x m
// multiply-adds per row from an L2-resident P, a small share of a layer next to the products), and
// grid-stride streaming kernels for the normalisation. Arithmetic is fp32, term by term as in
// kernels/cpu/linear_attention.cpp; cosFormer's angles are formed in double, as on the CPU.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/linear_attention.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

using detail::block_sum;
using detail::from_f32;
using detail::grid_for;
using detail::to_f32;
using detail::warp_sum;

constexpr int kRowThreads = 128;
constexpr int kMaxFeatures = 256;
constexpr int kPerThread = kMaxFeatures / kRowThreads;
constexpr int kThreads = 256;
constexpr int64_t kMaxRowBlocks = 1 << 16;
constexpr double kPi = 3.14159265358979323846;

__device__ __forceinline__ float block_max(float v, float* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float total = scratch[0];
  for (int w = 1; w < warps; ++w) total = fmaxf(total, scratch[w]);
  return total;
}

__device__ __forceinline__ void cosformer_weights(int64_t position, int64_t horizon, float& c, float& s) {
  const double angle = 0.5 * kPi * static_cast<double>(position) / static_cast<double>(horizon);
  c = static_cast<float>(cos(angle));
  s = static_cast<float>(sin(angle));
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    feature_forward_kernel(T* f, const T* x, const float* P, LinearFeatureMap map, bool query, int64_t rows, int64_t n,
                           int d, int m, int64_t position0, int64_t horizon, float scale, float norm) {
  __shared__ float xs[kMaxFeatures];
  __shared__ float scratch[32];
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    __syncthreads();  // the previous row's readers are done with xs
    for (int j = tid; j < d; j += kRowThreads) xs[j] = to_f32(x[r * d + j]);
    __syncthreads();
    T* out = f + r * m;
    if (map == LinearFeatureMap::Elu) {
      for (int j = tid; j < d; j += kRowThreads) out[j] = from_f32<T>(xs[j] > 0.f ? xs[j] + 1.f : expf(xs[j]));
    } else if (map == LinearFeatureMap::CosFormer) {
      float c, s;
      cosformer_weights(position0 + r % n, horizon, c, s);
      for (int j = tid; j < d; j += kRowThreads) {
        const float relu = fmaxf(xs[j], 0.f);
        out[j] = from_f32<T>(relu * c);
        out[d + j] = from_f32<T>(relu * s);
      }
    } else {
      float z[kPerThread];
      float local = -INFINITY, square = 0.f;
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        const int j = tid + k * kRowThreads;
        z[k] = 0.f;
        if (j < m) {
          float acc = 0.f;
          for (int i = 0; i < d; ++i) acc = fmaf(xs[i], P[static_cast<int64_t>(i) * m + j], acc);
          z[k] = acc * scale;
          local = fmaxf(local, z[k]);
        }
      }
      for (int j = tid; j < d; j += kRowThreads) square += xs[j] * xs[j];
      const float shift = query ? block_max(local, scratch) : 0.5f * scale * scale * block_sum(square, scratch);
#pragma unroll
      for (int k = 0; k < kPerThread; ++k) {
        const int j = tid + k * kRowThreads;
        if (j < m) out[j] = from_f32<T>(expf(z[k] - shift) * norm);
      }
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
    feature_backward_kernel(T* dx, const T* df, const T* f, const T* x, const float* P, LinearFeatureMap map,
                            bool query, int64_t rows, int64_t n, int d, int m, int64_t position0, int64_t horizon,
                            float scale) {
  __shared__ float gs[kMaxFeatures];
  __shared__ float scratch[32];
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    if (map == LinearFeatureMap::Elu) {
      for (int j = tid; j < d; j += kRowThreads) {
        const int64_t at = r * d + j;
        const float g = to_f32(df[at]);
        dx[at] = from_f32<T>(to_f32(x[at]) > 0.f ? g : g * to_f32(f[at]));
      }
    } else if (map == LinearFeatureMap::CosFormer) {
      float c, s;
      cosformer_weights(position0 + r % n, horizon, c, s);
      for (int j = tid; j < d; j += kRowThreads) {
        const float g = to_f32(df[r * m + j]) * c + to_f32(df[r * m + d + j]) * s;
        dx[r * d + j] = from_f32<T>(to_f32(x[r * d + j]) > 0.f ? g : 0.f);
      }
    } else {
      __syncthreads();  // the previous row's readers are done with gs
      float local = 0.f;
      for (int j = tid; j < m; j += kRowThreads) {
        const float g = to_f32(f[r * m + j]) * to_f32(df[r * m + j]);
        gs[j] = g;
        local += g;
      }
      const float sum = block_sum(local, scratch);  // its barriers also publish gs
      for (int i = tid; i < d; i += kRowThreads) {
        float acc = 0.f;
        const float* Pi = P + static_cast<int64_t>(i) * m;
        for (int j = 0; j < m; ++j) acc = fmaf(Pi[j], gs[j], acc);
        float v = scale * acc;
        if (!query) v -= scale * scale * sum * to_f32(x[r * d + i]);
        dx[r * d + i] = from_f32<T>(v);
      }
    }
  }
}

template <typename T>
__global__ void append_ones_kernel(T* vx, const T* v, int64_t rows, int64_t dv) {
  const int64_t total = rows * (dv + 1);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / (dv + 1), c = i - r * (dv + 1);
    vx[i] = c < dv ? v[r * dv + c] : from_f32<T>(1.f);
  }
}

template <typename T>
__global__ void drop_last_column_kernel(T* v, const T* vx, int64_t rows, int64_t dv) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * dv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / dv, c = i - r * dv;
    v[i] = vx[r * (dv + 1) + c];
  }
}

template <typename T>
__global__ void normalize_forward_kernel(T* o, const T* ox, int64_t rows, int64_t dv) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < rows * dv;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / dv, c = i - r * dv;
    const float den = to_f32(ox[r * (dv + 1) + dv]);
    const float inv = den > 0.f ? 1.f / den : 0.f;
    o[i] = from_f32<T>(to_f32(ox[r * (dv + 1) + c]) * inv);
  }
}

// A warp per row: the inner product ⟨dout, o⟩ by a butterfly.
template <typename T>
__global__ void normalize_backward_kernel(T* dox, const T* dout, const T* o, const T* ox, int64_t rows, int64_t dv) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x >> 5) + (threadIdx.x >> 5); r < rows; r += warps) {
    const float den = to_f32(ox[r * (dv + 1) + dv]);
    const float inv = den > 0.f ? 1.f / den : 0.f;
    float inner = 0.f;
    for (int64_t c = lane; c < dv; c += 32) {
      const float g = to_f32(dout[r * dv + c]);
      inner += g * to_f32(o[r * dv + c]);
      dox[r * (dv + 1) + c] = from_f32<T>(g * inv);
    }
    inner = warp_sum(inner);
    if (lane == 0) dox[r * (dv + 1) + dv] = from_f32<T>(-inner * inv);
  }
}

void check_features(const char* op, LinearFeatureMap map, const void* P, int64_t BH, int64_t n, int64_t d,
                    int64_t position0, int64_t horizon) {
  const int64_t m = cpu::linear_feature_count(map, d);
  if (BH < 0 || n < 0 || d < 1 || m > kMaxFeatures)
    throw std::invalid_argument(std::string(op) + ": invalid shape (at most " + std::to_string(kMaxFeatures) +
                                " features)");
  if (map == LinearFeatureMap::Performer && P == nullptr)
    throw std::invalid_argument(std::string(op) + ": the performer needs its projection");
  if (map == LinearFeatureMap::CosFormer && (horizon < 1 || position0 < 0 || position0 + n > horizon))
    throw std::invalid_argument(std::string(op) + ": positions outside the cosformer horizon");
}

unsigned row_blocks(int64_t rows) { return static_cast<unsigned>(std::max<int64_t>(1, std::min(rows, kMaxRowBlocks))); }

}  // namespace

template <typename T>
void linear_feature_forward(T* f, const T* x, const float* P, LinearFeatureMap map, bool query, int64_t BH, int64_t n,
                            int64_t d, int64_t position0, int64_t horizon, cudaStream_t stream) {
  check_features("linear_feature_forward", map, P, BH, n, d, position0, horizon);
  const int64_t rows = BH * n, m = cpu::linear_feature_count(map, d);
  if (rows == 0) return;
  launch("linear_feature_forward", feature_forward_kernel<T>, row_blocks(rows), kRowThreads, 0, stream, f, x, P, map,
         query, rows, n, static_cast<int>(d), static_cast<int>(m), position0, horizon,
         static_cast<float>(std::pow(static_cast<double>(d), -0.25)),
         static_cast<float>(1.0 / std::sqrt(static_cast<double>(m))));
}

template <typename T>
void linear_feature_backward(T* dx, const T* df, const T* f, const T* x, const float* P, LinearFeatureMap map,
                             bool query, int64_t BH, int64_t n, int64_t d, int64_t position0, int64_t horizon,
                             cudaStream_t stream) {
  check_features("linear_feature_backward", map, P, BH, n, d, position0, horizon);
  const int64_t rows = BH * n, m = cpu::linear_feature_count(map, d);
  if (rows == 0) return;
  launch("linear_feature_backward", feature_backward_kernel<T>, row_blocks(rows), kRowThreads, 0, stream, dx, df, f,
         x, P, map, query, rows, n, static_cast<int>(d), static_cast<int>(m), position0, horizon,
         static_cast<float>(std::pow(static_cast<double>(d), -0.25)));
}

template <typename T>
void append_ones(T* vx, const T* v, int64_t rows, int64_t dv, cudaStream_t stream) {
  if (rows * dv == 0) return;
  launch("append_ones", append_ones_kernel<T>, grid_for(rows * (dv + 1), kThreads), kThreads, 0, stream, vx, v, rows,
         dv);
}

template <typename T>
void drop_last_column(T* v, const T* vx, int64_t rows, int64_t dv, cudaStream_t stream) {
  if (rows * dv == 0) return;
  launch("drop_last_column", drop_last_column_kernel<T>, grid_for(rows * dv, kThreads), kThreads, 0, stream, v, vx,
         rows, dv);
}

template <typename T>
void normalize_rows_forward(T* o, const T* ox, int64_t rows, int64_t dv, cudaStream_t stream) {
  if (rows * dv == 0) return;
  launch("normalize_rows_forward", normalize_forward_kernel<T>, grid_for(rows * dv, kThreads), kThreads, 0, stream, o,
         ox, rows, dv);
}

template <typename T>
void normalize_rows_backward(T* dox, const T* dout, const T* o, const T* ox, int64_t rows, int64_t dv,
                             cudaStream_t stream) {
  if (rows * dv == 0) return;
  launch("normalize_rows_backward", normalize_backward_kernel<T>, grid_for(rows * 32, kThreads), kThreads, 0, stream,
         dox, dout, o, ox, rows, dv);
}

#define DJ_INSTANTIATE(T)                                                                                         \
  template void linear_feature_forward<T>(T*, const T*, const float*, LinearFeatureMap, bool, int64_t, int64_t,   \
                                          int64_t, int64_t, int64_t, cudaStream_t);                               \
  template void linear_feature_backward<T>(T*, const T*, const T*, const T*, const float*, LinearFeatureMap, bool, \
                                           int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);            \
  template void append_ones<T>(T*, const T*, int64_t, int64_t, cudaStream_t);                                    \
  template void drop_last_column<T>(T*, const T*, int64_t, int64_t, cudaStream_t);                               \
  template void normalize_rows_forward<T>(T*, const T*, int64_t, int64_t, cudaStream_t);                         \
  template void normalize_rows_backward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(__nv_bfloat16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
