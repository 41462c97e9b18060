// AdamW step, sum of squares (global norm) and clipping on flat fp32 buffers.
//
// AdamW bit-identity with dj::adamw_step (trainer/optim/adamw.cpp), by construction:
//   - the scalars (decay factor, 1 - β1, β2, 1 - β2, -lr/bc1, sqrt(bc2), eps) are computed on the
//     host in double with the CPU's expressions and rounded to float the same way;
//   - the kernel repeats the CPU's float operations in its order with explicitly rounded
//     intrinsics (__fmul_rn, __fsub_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn: IEEE round-to-nearest,
//     never contracted into an FMA by nvcc) and fmaf exactly where the CPU calls std::fma (lerp
//     and the second-moment update). x86-64 float arithmetic, std::fma and std::sqrt are
//     correctly rounded too, and the CPU code has no multiply feeding an add outside its explicit
//     std::fma calls (the products feed a division or a call argument), so even a CPU build that
//     contracts (GCC's C++ default with an FMA target, e.g. -march=native) computes the same
//     sequence of correctly rounded operations;
//   - no flush-to-zero: the library is built without --use_fast_math/-ftz, so subnormals behave as
//     on the CPU.
// Design: grid-stride, 256 threads a block, 4 values per access (float4 and 4 mask bytes) when
// every pointer allows it. Traffic per value: read p, m, v, g (16 B) + masks (1-2 B), write p, m, v
// (12 B): ~29 B, 12 GB for 405M parameters, ~2.8 ms at 4.3 TB/s.
//
// Sum of squares: fp64, deterministic for any GPU: block b of 256 threads sums the fixed range
// [4096 b, 4096 b + 4096) (16 coalesced loads per thread, all issued before use), the block tree
// sums them in a fixed order into partial[b]; one block of 1024 threads then adds the partials (a
// fixed strided split, then the fixed tree). A float squared is exact in double, so only the
// additions round (~1e-16 relative each): equal to the CPU's sum (another order) to ~1e-15.
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

using detail::load_pack;
using detail::Pack;
using detail::store_pack;

constexpr int kThreads = 256;

struct Scalars {
  float decay_factor, m_weight, v_keep, v_weight, neg_step_size, bias_correction2_sqrt, eps;
};

// torch's lerp as trainer/optim/adamw.cpp's lerp_toward.
__device__ __forceinline__ float lerp_toward(float start, float end, float weight) {
  const float diff = __fsub_rn(end, start);
  return fabsf(weight) < 0.5f ? fmaf(weight, diff, start) : fmaf(__fsub_rn(weight, 1.0f), diff, end);
}

struct Moments {
  float p, m, v;
};

__device__ __forceinline__ Moments adamw_value(float p, float m, float v, float g, bool decay,
                                               const Scalars& s) {
  if (decay) p = __fmul_rn(p, s.decay_factor);
  const float mi = lerp_toward(m, g, s.m_weight);
  const float vi = fmaf(__fmul_rn(s.v_weight, g), g, __fmul_rn(v, s.v_keep));
  const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
  const float pi = __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));
  return Moments{pi, mi, vi};
}

template <int V, bool kHasUpdate>
__global__ void __launch_bounds__(kThreads)
    adamw_kernel(float* params, float* m, float* v, const float* grads, const uint8_t* decay,
                 const uint8_t* update, int64_t n, Scalars s) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t packs = n / V;
  for (int64_t q = tid; q < packs; q += stride) {
    const int64_t i = q * V;
    Pack<uint8_t, V> train{};
    if constexpr (kHasUpdate) {
      train = load_pack<V>(update + i);
      bool any = false;
#pragma unroll
      for (int k = 0; k < V; ++k) any = any || train.v[k] != 0;
      if (!any) continue;  // frozen values: p, m, v untouched
    }
    Pack<float, V> pp = load_pack<V>(params + i);
    Pack<float, V> mp = load_pack<V>(m + i);
    Pack<float, V> vp = load_pack<V>(v + i);
    const Pack<float, V> gp = load_pack<V>(grads + i);
    const Pack<uint8_t, V> dp = load_pack<V>(decay + i);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      if constexpr (kHasUpdate) {
        if (train.v[k] == 0) continue;  // keeps the loaded values, stored back unchanged
      }
      const Moments r = adamw_value(pp.v[k], mp.v[k], vp.v[k], gp.v[k], dp.v[k] != 0, s);
      pp.v[k] = r.p;
      mp.v[k] = r.m;
      vp.v[k] = r.v;
    }
    store_pack<V>(params + i, pp);
    store_pack<V>(m + i, mp);
    store_pack<V>(v + i, vp);
  }
  for (int64_t i = packs * V + tid; i < n; i += stride) {
    if constexpr (kHasUpdate) {
      if (update[i] == 0) continue;
    }
    const Moments r = adamw_value(params[i], m[i], v[i], grads[i], decay[i] != 0, s);
    params[i] = r.p;
    m[i] = r.m;
    v[i] = r.v;
  }
}

constexpr int kNormThreads = 256;
constexpr int kNormPerThread = 16;
constexpr int64_t kNormBlockValues = int64_t(kNormThreads) * kNormPerThread;  // 4096
constexpr int kNormFinishThreads = 1024;

__global__ void __launch_bounds__(kNormThreads)
    sum_of_squares_partials_kernel(double* partials, const float* grads, int64_t n) {
  __shared__ double scratch[32];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kNormBlockValues + threadIdx.x;
  float values[kNormPerThread];
#pragma unroll
  for (int k = 0; k < kNormPerThread; ++k) {
    const int64_t i = begin + int64_t(k) * kNormThreads;
    values[k] = i < n ? grads[i] : 0.0f;
  }
  double sum = 0.0;
#pragma unroll
  for (int k = 0; k < kNormPerThread; ++k) {
    const double g = values[k];
    sum += g * g;  // exact product: contracting it into an FMA changes nothing
  }
  sum = detail::block_sum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void __launch_bounds__(kNormFinishThreads)
    sum_of_squares_finish_kernel(double* result, const double* partials, int64_t count) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (int64_t b = threadIdx.x; b < count; b += blockDim.x) sum += partials[b];
  sum = detail::block_sum(sum, scratch);
  if (threadIdx.x == 0) *result = sum;
}

}  // namespace

void adamw_step(float* params, float* m, float* v, const float* grads, const uint8_t* decay,
                const uint8_t* update, int64_t n, int64_t step, double lr, const AdamWParams& config,
                cudaStream_t stream) {
  if (n <= 0) return;
  // trainer/optim/adamw.cpp's scalars, expression for expression.
  const double bias_correction1 = 1.0 - std::pow(config.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(config.beta2, static_cast<double>(step));
  Scalars s{};
  s.decay_factor = static_cast<float>(1.0 - lr * config.weight_decay);
  s.m_weight = static_cast<float>(1.0 - config.beta1);
  s.v_keep = static_cast<float>(config.beta2);
  s.v_weight = static_cast<float>(1.0 - config.beta2);
  s.neg_step_size = static_cast<float>(-(lr / bias_correction1));
  s.bias_correction2_sqrt = static_cast<float>(std::pow(bias_correction2, 0.5));
  s.eps = static_cast<float>(config.eps);

  const bool vec = detail::aligned(params, 16) && detail::aligned(m, 16) &&
                   detail::aligned(v, 16) && detail::aligned(grads, 16) &&
                   detail::aligned(decay, 4) && (update == nullptr || detail::aligned(update, 4));
  const unsigned grid = detail::grid_for(vec ? (n + 3) / 4 : n, kThreads);
  auto kernel = vec ? (update != nullptr ? adamw_kernel<4, true> : adamw_kernel<4, false>)
                    : (update != nullptr ? adamw_kernel<1, true> : adamw_kernel<1, false>);
  launch("adamw_kernel", kernel, grid, kThreads, 0, stream, params, m, v, grads, decay, update, n, s);
}

void sum_of_squares_async(const float* grads, int64_t n, double* result, cudaStream_t stream) {
  if (n <= 0) {
    DJ_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
    return;
  }
  const int64_t blocks = (n + kNormBlockValues - 1) / kNormBlockValues;
  if (blocks > 0x7fffffff) throw std::invalid_argument("sum_of_squares: too many values");
  double* partials = nullptr;
  DJ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partials),
                                static_cast<size_t>(blocks) * sizeof(double), stream));
  launch("sum_of_squares_partials_kernel", sum_of_squares_partials_kernel, static_cast<unsigned>(blocks),
         kNormThreads, 0, stream, partials, grads, n);
  launch("sum_of_squares_finish_kernel", sum_of_squares_finish_kernel, 1, kNormFinishThreads, 0, stream, result,
         partials, blocks);
  DJ_CUDA_CHECK(cudaFreeAsync(partials, stream));
}

double sum_of_squares(const float* grads, int64_t n, cudaStream_t stream) {
  double* result = nullptr;
  DJ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&result), sizeof(double), stream));
  double host = 0.0;
  try {
    sum_of_squares_async(grads, n, result, stream);
    DJ_CUDA_CHECK(cudaMemcpyAsync(&host, result, sizeof(double), cudaMemcpyDeviceToHost, stream));
  } catch (...) {
    cudaFreeAsync(result, stream);
    throw;
  }
  DJ_CUDA_CHECK(cudaFreeAsync(result, stream));
  DJ_CUDA_CHECK(cudaStreamSynchronize(stream));
  return host;
}

double global_norm(const float* grads, int64_t n, cudaStream_t stream) {
  return std::sqrt(sum_of_squares(grads, n, stream));
}

double clip_by_global_norm(float* grads, int64_t n, double norm, double max_norm,
                           cudaStream_t stream) {
  // trainer/optim/adamw.cpp's clip_by_global_norm: the same double expression, the same float
  // factor, one rounded multiply per value.
  const double clip_coef = max_norm / (norm + 1e-6);
  if (!(clip_coef < 1.0)) return 1.0;
  const float factor = static_cast<float>(clip_coef);
  scale(grads, n, factor, stream);
  return static_cast<double>(factor);
}

}  // namespace dj::cuda
