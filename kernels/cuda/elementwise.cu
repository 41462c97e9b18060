// Elementwise ops: GELU (erf and tanh) forward/backward, fp32 <-> bf16 conversion, fp32 scaling.
//
// Design: pure streaming, so the only goal is to move each byte once at full width. One grid-stride
// kernel per op, 256 threads a block, at most 1024 blocks (detail::grid_for). When every pointer is
// 16-byte aligned each thread moves 16 bytes per access (4 floats or 8 bf16: one LDG.128/STG.128);
// otherwise the same kernel runs with one value per access. The ragged end (n % V values) is done
// by the first threads of the grid after the vector loop. Traffic: GELU forward reads n and writes
// n values, backward reads 2n and writes n (dx may alias dy: each thread reads its values before it
// writes them); conversion reads 4 and writes 2 bytes per value (or the reverse). Arithmetic is
// fp32 with the accurate (non-intrinsic) erff/tanhf/expf; the expressions follow kernels/cpu/gelu.cpp
// term by term.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

using detail::aligned;
using detail::from_f32;
using detail::grid_for;
using detail::load_pack;
using detail::Pack;
using detail::store_pack;
using detail::to_f32;

constexpr int kThreads = 256;

// The CPU's constants (std::numbers in double), rounded to float as the CPU's T(...) does.
constexpr double kSqrt2 = 1.41421356237309504880;
constexpr double kInvSqrtPi = 0.56418958354775628695;
constexpr float kTanhCubic = static_cast<float>(0.044715);
constexpr float kTanhCubic3 = static_cast<float>(3 * 0.044715);
constexpr float kSqrt2OverPi = static_cast<float>(kSqrt2 * kInvSqrtPi);
constexpr float kInvSqrt2 = static_cast<float>(1.0 / kSqrt2);
constexpr float kInvSqrt2Pi = static_cast<float>(kInvSqrtPi / kSqrt2);

template <GeluKind K>
__device__ __forceinline__ float gelu_value(float x) {
  if constexpr (K == GeluKind::Erf) {
    return 0.5f * x * (1.0f + erff(x * kInvSqrt2));
  } else {
    const float u = kSqrt2OverPi * (x + kTanhCubic * x * x * x);
    return 0.5f * x * (1.0f + tanhf(u));
  }
}

template <GeluKind K>
__device__ __forceinline__ float gelu_derivative(float x) {
  if constexpr (K == GeluKind::Erf) {
    // d/dx [x Phi(x)] = Phi(x) + x phi(x).
    const float cdf = 0.5f * (1.0f + erff(x * kInvSqrt2));
    const float pdf = kInvSqrt2Pi * expf(-0.5f * x * x);
    return cdf + x * pdf;
  } else {
    const float u = kSqrt2OverPi * (x + kTanhCubic * x * x * x);
    const float th = tanhf(u);
    const float du = kSqrt2OverPi * (1.0f + kTanhCubic3 * x * x);
    return 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
  }
}

template <typename T, int V, GeluKind K>
__global__ void __launch_bounds__(kThreads) gelu_forward_kernel(T* y, const T* x, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t p = tid; p < packs; p += stride) {
    const Pack<T, V> in = load_pack<V>(x + p * V);
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = from_f32<T>(gelu_value<K>(to_f32(in.v[k])));
    store_pack<V>(y + p * V, out);
  }
  for (int64_t i = packs * V + tid; i < n; i += stride) y[i] = from_f32<T>(gelu_value<K>(to_f32(x[i])));
}

template <typename T, int V, GeluKind K>
__global__ void __launch_bounds__(kThreads)
    gelu_backward_kernel(T* dx, const T* dy, const T* x, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t p = tid; p < packs; p += stride) {
    const Pack<T, V> g = load_pack<V>(dy + p * V);
    const Pack<T, V> in = load_pack<V>(x + p * V);
    Pack<T, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k)
      out.v[k] = from_f32<T>(to_f32(g.v[k]) * gelu_derivative<K>(to_f32(in.v[k])));
    store_pack<V>(dx + p * V, out);
  }
  for (int64_t i = packs * V + tid; i < n; i += stride)
    dx[i] = from_f32<T>(to_f32(dy[i]) * gelu_derivative<K>(to_f32(x[i])));
}

template <typename T, GeluKind K>
void launch_gelu_forward(T* y, const T* x, int64_t n, cudaStream_t stream) {
  constexpr int V = detail::kVec16<T>;
  if (aligned(y, 16) && aligned(x, 16))
    launch("gelu_forward_kernel", gelu_forward_kernel<T, V, K>, grid_for((n + V - 1) / V, kThreads), kThreads,
           0, stream, y, x, n);
  else
    launch("gelu_forward_kernel", gelu_forward_kernel<T, 1, K>, grid_for(n, kThreads), kThreads, 0, stream, y,
           x, n);
}

template <typename T, GeluKind K>
void launch_gelu_backward(T* dx, const T* dy, const T* x, int64_t n, cudaStream_t stream) {
  constexpr int V = detail::kVec16<T>;
  if (aligned(dx, 16) && aligned(dy, 16) && aligned(x, 16))
    launch("gelu_backward_kernel", gelu_backward_kernel<T, V, K>, grid_for((n + V - 1) / V, kThreads),
           kThreads, 0, stream, dx, dy, x, n);
  else
    launch("gelu_backward_kernel", gelu_backward_kernel<T, 1, K>, grid_for(n, kThreads), kThreads, 0, stream,
           dx, dy, x, n);
}

// ---- conversions and scaling: 4 values per access when aligned ------------------------------------

template <int V>
__global__ void __launch_bounds__(kThreads)
    float_to_bf16_kernel(__nv_bfloat16* dst, const float* src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t p = tid; p < packs; p += stride) {
    const Pack<float, V> in = load_pack<V>(src + p * V);
    Pack<__nv_bfloat16, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = __float2bfloat16_rn(in.v[k]);
    store_pack<V>(dst + p * V, out);
  }
  for (int64_t i = packs * V + tid; i < n; i += stride) dst[i] = __float2bfloat16_rn(src[i]);
}

template <int V>
__global__ void __launch_bounds__(kThreads)
    bf16_to_float_kernel(float* dst, const __nv_bfloat16* src, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t p = tid; p < packs; p += stride) {
    const Pack<__nv_bfloat16, V> in = load_pack<V>(src + p * V);
    Pack<float, V> out;
#pragma unroll
    for (int k = 0; k < V; ++k) out.v[k] = __bfloat162float(in.v[k]);
    store_pack<V>(dst + p * V, out);
  }
  for (int64_t i = packs * V + tid; i < n; i += stride) dst[i] = __bfloat162float(src[i]);
}

template <int V>
__global__ void __launch_bounds__(kThreads) scale_kernel(float* x, int64_t n, float factor) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t p = tid; p < packs; p += stride) {
    Pack<float, V> v = load_pack<V>(x + p * V);
#pragma unroll
    for (int k = 0; k < V; ++k) v.v[k] = __fmul_rn(v.v[k], factor);
    store_pack<V>(x + p * V, v);
  }
  for (int64_t i = packs * V + tid; i < n; i += stride) x[i] = __fmul_rn(x[i], factor);
}

}  // namespace

template <typename T>
void gelu_forward(T* y, const T* x, int64_t n, GeluKind kind, cudaStream_t stream) {
  if (n <= 0) return;
  if (kind == GeluKind::Erf)
    launch_gelu_forward<T, GeluKind::Erf>(y, x, n, stream);
  else
    launch_gelu_forward<T, GeluKind::Tanh>(y, x, n, stream);
}

template <typename T>
void gelu_backward(T* dx, const T* dy, const T* x, int64_t n, GeluKind kind, cudaStream_t stream) {
  if (n <= 0) return;
  if (kind == GeluKind::Erf)
    launch_gelu_backward<T, GeluKind::Erf>(dx, dy, x, n, stream);
  else
    launch_gelu_backward<T, GeluKind::Tanh>(dx, dy, x, n, stream);
}

void convert(bf16* dst, const float* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (aligned(dst, 8) && aligned(src, 16))
    launch("float_to_bf16_kernel", float_to_bf16_kernel<4>, grid_for((n + 3) / 4, kThreads), kThreads, 0,
           stream, dst, src, n);
  else
    launch("float_to_bf16_kernel", float_to_bf16_kernel<1>, grid_for(n, kThreads), kThreads, 0, stream, dst,
           src, n);
}

void convert(float* dst, const bf16* src, int64_t n, cudaStream_t stream) {
  if (n <= 0) return;
  if (aligned(dst, 16) && aligned(src, 8))
    launch("bf16_to_float_kernel", bf16_to_float_kernel<4>, grid_for((n + 3) / 4, kThreads), kThreads, 0,
           stream, dst, src, n);
  else
    launch("bf16_to_float_kernel", bf16_to_float_kernel<1>, grid_for(n, kThreads), kThreads, 0, stream, dst,
           src, n);
}

void scale(float* x, int64_t n, float factor, cudaStream_t stream) {
  if (n <= 0) return;
  if (aligned(x, 16))
    launch("scale_kernel", scale_kernel<4>, grid_for((n + 3) / 4, kThreads), kThreads, 0, stream, x, n,
           factor);
  else
    launch("scale_kernel", scale_kernel<1>, grid_for(n, kThreads), kThreads, 0, stream, x, n, factor);
}

template void gelu_forward<float>(float*, const float*, int64_t, GeluKind, cudaStream_t);
template void gelu_forward<bf16>(bf16*, const bf16*, int64_t, GeluKind, cudaStream_t);
template void gelu_backward<float>(float*, const float*, const float*, int64_t, GeluKind, cudaStream_t);
template void gelu_backward<bf16>(bf16*, const bf16*, const bf16*, int64_t, GeluKind, cudaStream_t);

}  // namespace dj::cuda
