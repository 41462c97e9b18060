// Fused softmax + cross-entropy over the vocabulary; the probabilities are never stored.
//
// Design: one block of 512 threads per row (8192 rows x 50304 logits at the 410M model's shape),
// at least two blocks resident per SM (__launch_bounds__(512, 2): <= 64 registers), so one row's
// reduction barrier overlaps the other row's streaming.
// Pass 1 streams the row once with 16-byte loads (two packs in flight per thread) and keeps an
// online (max, sum of exp(x - max)) pair per thread: each pack's maximum rescales the running sum
// once, then one expf per logit. The pairs are merged across the warp (butterfly: the merge is
// symmetric, so every lane holds the same pair) and then across warps in warp order: deterministic.
// Row loss = log(sum) - (x[target] - max) in double, as the CPU op; x[target] is read before any
// thread can overwrite the row. Pass 2 (write_gradient) re-reads the row — 100 KB (bf16) or 200 KB
// (fp32), with ~2 rows per SM in flight (26 MB / 53 MB over 132 SMs), so mostly from L2 — and
// writes grad_scale * exp(x - max) / sum, minus grad_scale at the target, in place. Traffic floor
// with the gradient: read + write every logit once (1.65 GB in bf16 at 8192 x 50304, ~0.38 ms at
// 4.3 TB/s); expf is accurate (not __expf): ~20-25 instructions per logit over the two passes,
// ~0.3 ms of issue time on an H200, close to the memory floor, so this kernel sits near the ridge
// (if the benchmark shows it issue-bound, exp2f on pre-scaled logits is the next step). Ignored rows (target < 0) and rows whose target is >= vocab
// get zeros and a zero loss; the latter are counted as invalid.
//
// Totals: per-row losses land in a double buffer; one block of 1024 threads sums them (and counts
// the valid and invalid targets) in a fixed order.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

using detail::from_f32;
using detail::load_pack;
using detail::Pack;
using detail::store_pack;
using detail::to_f32;

constexpr int kThreads = 512;
constexpr int kMinBlocksPerSm = 2;
constexpr int kWarps = kThreads / 32;
constexpr int kTotalsThreads = 1024;

// Merges (m2, s2) into (m, s): the pair of the union of the two value sets. Symmetric in its two
// arguments bit for bit (max is, and the sum adds the same two products).
__device__ __forceinline__ void merge(float& m, float& s, float m2, float s2) {
  const float top = fmaxf(m, m2);
  if (top == -INFINITY) return;  // both sets empty (or all -inf)
  const float a = m == -INFINITY ? 0.0f : s * expf(m - top);
  const float b = m2 == -INFINITY ? 0.0f : s2 * expf(m2 - top);
  s = a + b;
  m = top;
}

// Adds V values to the running pair.
template <int V>
__device__ __forceinline__ void accumulate(float& m, float& s, const float (&v)[V]) {
  float top = v[0];
#pragma unroll
  for (int k = 1; k < V; ++k) top = fmaxf(top, v[k]);
  if (top > m) {
    s = m == -INFINITY ? 0.0f : s * expf(m - top);
    m = top;
  }
  if (m == -INFINITY) return;  // every value so far is -inf: exp(-inf) adds nothing
#pragma unroll
  for (int k = 0; k < V; ++k) s += expf(v[k] - m);
}

template <typename T, int V>
__device__ __forceinline__ void unpack(const Pack<T, V>& pack, float (&v)[V]) {
#pragma unroll
  for (int k = 0; k < V; ++k) v[k] = to_f32(pack.v[k]);
}

// The (max, sum of exp) pair of a block's values: warps by shuffles, then the warps' pairs in warp
// order, so every thread ends with the same pair.
__device__ __forceinline__ void block_merge(float& m, float& s, float* s_max, float* s_sum) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, offset);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, offset);
    merge(m, s, m2, s2);
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  __syncthreads();  // the scratch may still be read from a previous reduction
  if (lane == 0) {
    s_max[warp] = m;
    s_sum[warp] = s;
  }
  __syncthreads();
  m = s_max[0];
  s = s_sum[0];
  for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) merge(m, s, s_max[w], s_sum[w]);
}

template <typename T, int V, bool kGradient>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    cross_entropy_kernel(T* logits, const int32_t* targets, int64_t vocab, float grad_scale,
                         double* row_loss) {
  __shared__ float s_max[kWarps];
  __shared__ float s_sum[kWarps];
  const int64_t row = blockIdx.x;
  T* lr = logits + row * vocab;
  const int32_t target = targets[row];
  const int64_t packs = vocab / V;  // the host picks V dividing vocab
  const int64_t step = blockDim.x;

  // Block-uniform branch (every thread reads the same target): the early return skips no barrier
  // that other threads of the block would reach.
  if (target < 0 || target >= vocab) {
    if constexpr (kGradient) {
      Pack<T, V> zero;
#pragma unroll
      for (int k = 0; k < V; ++k) zero.v[k] = from_f32<T>(0.0f);
      for (int64_t p = threadIdx.x; p < packs; p += step) store_pack<V>(lr + p * V, zero);
    }
    if (threadIdx.x == 0) row_loss[row] = 0.0;
    return;
  }

  // Read before the barriers of the reduction, hence before pass 2 overwrites the row.
  const float x_target = threadIdx.x == 0 ? to_f32(lr[target]) : 0.0f;

  float m = -INFINITY;
  float s = 0.0f;
  int64_t p = threadIdx.x;
  for (; p + step < packs; p += 2 * step) {
    const Pack<T, V> a = load_pack<V>(lr + p * V);
    const Pack<T, V> b = load_pack<V>(lr + (p + step) * V);
    float va[V];
    float vb[V];
    unpack(a, va);
    unpack(b, vb);
    accumulate<V>(m, s, va);
    accumulate<V>(m, s, vb);
  }
  if (p < packs) {
    float va[V];
    unpack(load_pack<V>(lr + p * V), va);
    accumulate<V>(m, s, va);
  }

  block_merge(m, s, s_max, s_sum);
  const float row_max = m;
  const float row_sum = s;

  if (threadIdx.x == 0)
    row_loss[row] = log(static_cast<double>(row_sum)) -
                    (static_cast<double>(x_target) - static_cast<double>(row_max));

  if constexpr (kGradient) {
    const float scale = grad_scale / row_sum;
    for (int64_t q = threadIdx.x; q < packs; q += step) {
      const Pack<T, V> in = load_pack<V>(lr + q * V);
      Pack<T, V> out;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        float g = expf(to_f32(in.v[k]) - row_max) * scale;
        if (q * V + k == target) g -= grad_scale;
        out.v[k] = from_f32<T>(g);
      }
      store_pack<V>(lr + q * V, out);
    }
  }
}

// One row per block: the softmaxes of z, z/τ and t/τ by online (max, sum) pairs, then the KL's
// cross term, then the loss and (kGradient) the gradient in place of the row.
template <typename T, bool kGradient>
__global__ void __launch_bounds__(kThreads, kMinBlocksPerSm)
    distill_kernel(T* logits, const T* teacher, const int32_t* targets, int64_t vocab, float grad_scale, float weight,
                   float tau, double* row_loss) {
  __shared__ float s_max[kWarps];
  __shared__ float s_sum[kWarps];
  __shared__ double s_cross[32];
  const int64_t row = blockIdx.x;
  T* lr = logits + row * vocab;
  const T* tr = teacher + row * vocab;
  const int32_t target = targets[row];
  const int64_t step = blockDim.x;
  if (target < 0 || target >= vocab) {  // block-uniform
    if constexpr (kGradient)
      for (int64_t j = threadIdx.x; j < vocab; j += step) lr[j] = from_f32<T>(0.0f);
    if (threadIdx.x == 0) row_loss[row] = 0.0;
    return;
  }
  const float x_target = threadIdx.x == 0 ? to_f32(lr[target]) : 0.0f;
  const float inv_tau = __frcp_rn(tau);
  float mz = -INFINITY, sz = 0.0f, ms = -INFINITY, ss = 0.0f, mt = -INFINITY, st = 0.0f;
  for (int64_t j = threadIdx.x; j < vocab; j += step) {
    const float z = to_f32(lr[j]);
    const float v0[1] = {z};
    const float v1[1] = {__fmul_rn(z, inv_tau)};
    const float v2[1] = {__fmul_rn(to_f32(tr[j]), inv_tau)};
    accumulate<1>(mz, sz, v0);
    accumulate<1>(ms, ss, v1);
    accumulate<1>(mt, st, v2);
  }
  block_merge(mz, sz, s_max, s_sum);
  block_merge(ms, ss, s_max, s_sum);
  block_merge(mt, st, s_max, s_sum);
  double cross = 0.0;  // Σ exp(t/τ − max) (t/τ − z/τ)
  for (int64_t j = threadIdx.x; j < vocab; j += step) {
    const float zz = __fmul_rn(to_f32(lr[j]), inv_tau);
    const float tt = __fmul_rn(to_f32(tr[j]), inv_tau);
    cross += static_cast<double>(expf(tt - mt)) * (static_cast<double>(tt) - static_cast<double>(zz));
  }
  cross = detail::block_sum(cross, s_cross);
  if (threadIdx.x == 0) {
    const double kl = cross / st - (static_cast<double>(mt) + log(static_cast<double>(st))) +
                      (static_cast<double>(ms) + log(static_cast<double>(ss)));
    const double ce = log(static_cast<double>(sz)) - (static_cast<double>(x_target) - static_cast<double>(mz));
    row_loss[row] = ce + static_cast<double>(weight) * static_cast<double>(tau) * static_cast<double>(tau) * kl;
  }
  if constexpr (kGradient) {
    const float a = grad_scale / sz;
    const float b = grad_scale * weight * tau / ss;
    const float c = grad_scale * weight * tau / st;
    for (int64_t j = threadIdx.x; j < vocab; j += step) {
      const float z = to_f32(lr[j]);
      const float zz = __fmul_rn(z, inv_tau);
      const float tt = __fmul_rn(to_f32(tr[j]), inv_tau);
      float g = expf(z - mz) * a + expf(zz - ms) * b - expf(tt - mt) * c;
      if (j == target) g -= grad_scale;
      lr[j] = from_f32<T>(g);
    }
  }
}

__global__ void __launch_bounds__(kTotalsThreads)
    cross_entropy_totals_kernel(CrossEntropyTotals* totals, const double* row_loss,
                                const int32_t* targets, int64_t rows, int64_t vocab) {
  __shared__ double s_loss[32];
  __shared__ long long s_count[32];
  __shared__ long long s_invalid[32];
  double loss = 0.0;
  long long count = 0;
  long long invalid = 0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) {
    loss += row_loss[r];
    const int32_t t = targets[r];
    count += (t >= 0 && t < vocab) ? 1 : 0;
    invalid += t >= vocab ? 1 : 0;
  }
  loss = detail::block_sum(loss, s_loss);
  count = detail::block_sum(count, s_count);
  invalid = detail::block_sum(invalid, s_invalid);
  if (threadIdx.x == 0) {
    totals->loss_sum = loss;
    totals->count = count;
    totals->invalid = invalid;
  }
}

template <typename T, int V>
void launch_rows(T* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                 bool write_gradient, float grad_scale, double* row_loss, cudaStream_t stream) {
  const auto grid = static_cast<unsigned>(rows);
  launch("cross_entropy_kernel",
         write_gradient ? cross_entropy_kernel<T, V, true> : cross_entropy_kernel<T, V, false>, grid,
         kThreads, 0, stream, logits, targets, vocab, grad_scale, row_loss);
}

constexpr int kSquaredErrorThreads = 256;
constexpr int64_t kSquaredErrorBlock = 4096;

template <typename T>
__global__ void __launch_bounds__(kSquaredErrorThreads)
    squared_error_partials_kernel(double* partials, T* grad, const T* a, const T* b, int64_t n, float grad_scale) {
  __shared__ double scratch[32];
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kSquaredErrorBlock;
  const int64_t end = begin + kSquaredErrorBlock < n ? begin + kSquaredErrorBlock : n;
  double sum = 0.0;
  for (int64_t i = begin + threadIdx.x; i < end; i += kSquaredErrorThreads) {
    const float diff = __fsub_rn(detail::to_f32(a[i]), detail::to_f32(b[i]));
    sum += static_cast<double>(diff) * static_cast<double>(diff);  // exact in double
    if (grad != nullptr) grad[i] = detail::from_f32<T>(__fmul_rn(grad_scale, diff));
  }
  sum = detail::block_sum(sum, scratch);
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

__global__ void __launch_bounds__(1024) squared_error_finish_kernel(double* result, const double* partials,
                                                                    int64_t count) {
  __shared__ double scratch[32];
  double sum = 0.0;
  for (int64_t k = threadIdx.x; k < count; k += blockDim.x) sum += partials[k];
  sum = detail::block_sum(sum, scratch);
  if (threadIdx.x == 0) *result = sum;
}

}  // namespace

template <typename T>
void distill_cross_entropy_async(T* logits, const T* teacher, const int32_t* targets, int64_t rows, int64_t vocab,
                                 bool write_gradient, float grad_scale, float weight, float temperature,
                                 double* row_loss, CrossEntropyTotals* totals, cudaStream_t stream) {
  if (rows > 0x7fffffff) throw std::invalid_argument("distill_cross_entropy: too many rows");
  if (rows <= 0) {
    DJ_CUDA_CHECK(cudaMemsetAsync(totals, 0, sizeof(CrossEntropyTotals), stream));
    return;
  }
  if (vocab <= 0) throw std::invalid_argument("distill_cross_entropy: empty vocabulary");
  if (!(temperature > 0)) throw std::invalid_argument("distill_cross_entropy: the temperature must be positive");
  launch("distill_kernel", write_gradient ? distill_kernel<T, true> : distill_kernel<T, false>,
         static_cast<unsigned>(rows), kThreads, 0, stream, logits, teacher, targets, vocab, grad_scale, weight,
         temperature, row_loss);
  launch("cross_entropy_totals_kernel", cross_entropy_totals_kernel, 1, kTotalsThreads, 0, stream, totals,
         row_loss, targets, rows, vocab);
}

template <typename T>
void squared_error_async(T* grad, const T* a, const T* b, int64_t n, float grad_scale, double* result,
                         cudaStream_t stream) {
  if (n <= 0) {
    DJ_CUDA_CHECK(cudaMemsetAsync(result, 0, sizeof(double), stream));
    return;
  }
  const int64_t blocks = (n + kSquaredErrorBlock - 1) / kSquaredErrorBlock;
  if (blocks > 0x7fffffff) throw std::invalid_argument("squared_error: too many values");
  double* partials = nullptr;
  DJ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&partials), static_cast<size_t>(blocks) * sizeof(double),
                                stream));
  launch("squared_error_partials_kernel", squared_error_partials_kernel<T>, static_cast<unsigned>(blocks),
         kSquaredErrorThreads, 0, stream, partials, grad, a, b, n, grad_scale);
  launch("squared_error_finish_kernel", squared_error_finish_kernel, 1, 1024, 0, stream, result, partials, blocks);
  DJ_CUDA_CHECK(cudaFreeAsync(partials, stream));
}

template <typename T>
void softmax_cross_entropy_async(T* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                                 bool write_gradient, float grad_scale, double* row_loss,
                                 CrossEntropyTotals* totals, cudaStream_t stream) {
  if (rows > 0x7fffffff) throw std::invalid_argument("softmax_cross_entropy: too many rows");
  if (rows <= 0) {
    DJ_CUDA_CHECK(cudaMemsetAsync(totals, 0, sizeof(CrossEntropyTotals), stream));
    return;
  }
  if (vocab <= 0) throw std::invalid_argument("softmax_cross_entropy: empty vocabulary");
  constexpr int V = detail::kVec16<T>;
  if (vocab % V == 0 && detail::aligned(logits, 16))
    launch_rows<T, V>(logits, targets, rows, vocab, write_gradient, grad_scale, row_loss, stream);
  else
    launch_rows<T, 1>(logits, targets, rows, vocab, write_gradient, grad_scale, row_loss, stream);
  launch("cross_entropy_totals_kernel", cross_entropy_totals_kernel, 1, kTotalsThreads, 0, stream, totals,
         row_loss, targets, rows, vocab);
}

template <typename T>
CrossEntropyResult softmax_cross_entropy(T* logits, const int32_t* targets, int64_t rows,
                                         int64_t vocab, bool write_gradient, float grad_scale,
                                         cudaStream_t stream) {
  double* row_loss = nullptr;
  CrossEntropyTotals* totals = nullptr;
  const int64_t row_slots = rows > 0 ? rows : 1;
  DJ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&row_loss),
                                static_cast<size_t>(row_slots) * sizeof(double), stream));
  DJ_CUDA_CHECK(
      cudaMallocAsync(reinterpret_cast<void**>(&totals), sizeof(CrossEntropyTotals), stream));
  CrossEntropyTotals host{};
  try {
    softmax_cross_entropy_async(logits, targets, rows, vocab, write_gradient, grad_scale, row_loss,
                                totals, stream);
    DJ_CUDA_CHECK(
        cudaMemcpyAsync(&host, totals, sizeof(host), cudaMemcpyDeviceToHost, stream));
  } catch (...) {
    cudaFreeAsync(row_loss, stream);
    cudaFreeAsync(totals, stream);
    throw;
  }
  DJ_CUDA_CHECK(cudaFreeAsync(row_loss, stream));
  DJ_CUDA_CHECK(cudaFreeAsync(totals, stream));
  DJ_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (host.invalid > 0)
    throw std::runtime_error("cross entropy: " + std::to_string(host.invalid) +
                             " target(s) outside the vocabulary [0, " + std::to_string(vocab) +
                             ")");
  return CrossEntropyResult{host.loss_sum, static_cast<int64_t>(host.count)};
}

#define DJ_INSTANTIATE(T)                                                                       \
  template void softmax_cross_entropy_async<T>(T*, const int32_t*, int64_t, int64_t, bool,      \
                                               float, double*, CrossEntropyTotals*,             \
                                               cudaStream_t);                                   \
  template CrossEntropyResult softmax_cross_entropy<T>(T*, const int32_t*, int64_t, int64_t,    \
                                                       bool, float, cudaStream_t);      \
  template void squared_error_async<T>(T*, const T*, const T*, int64_t, float, double*, cudaStream_t);     \
  template void distill_cross_entropy_async<T>(T*, const T*, const int32_t*, int64_t, int64_t, bool, float, float, \
                                               float, double*, CrossEntropyTotals*, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(bf16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
