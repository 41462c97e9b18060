// DctFeatureMap (dct_cufft.h): the DiJiang feature map through a batched cuFFT DCT-III, for the
// comparison and benchmark against the stored-P kernel in check_dct.cpp. Registers no case.
//
// Passes (the construction is derived in dct_cufft.h):
//   pre:  one thread per (row, k), k = 0 .. d/2: W[row][k] = (x_k − i x_{d−k}) · tw_k, where
//         tw_0 = √(1/d) and tw_k = e^{iπk/(2d)} / √(2d) (s_k / 2 folded in; x_d = 0);
//   fft:  cufftExecC2R, `rows` transforms of length d: W [rows, d/2 + 1] -> v [rows, d];
//   post: one warp per row, in place: z_m = v_{perm(m)} t_m with perm(2n) = n,
//         perm(2n + 1) = d − 1 − n, then the softmax as in the GEMM kernel (row max, expf, one
//         reciprocal of the sum).
#include <cuda_runtime.h>
#include <cufft.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/launch.h"
#include "tests/gpu/check.h"
#include "tests/gpu/dct_cufft.h"

namespace dj::gpucheck {

namespace {

constexpr int kThreads = 256;
constexpr int kBlocksPerSm = 16;

void cufft_check(cufftResult status, const char* call) {
  if (status != CUFFT_SUCCESS)
    throw std::runtime_error(std::string(call) + ": cufftResult " + std::to_string(static_cast<int>(status)));
}
#define DJ_CUFFT(call) cufft_check((call), #call)

__global__ void __launch_bounds__(kThreads)
    dct3_pre_kernel(float2* __restrict__ W, const float* __restrict__ x, const float2* __restrict__ tw,
                    int64_t rows, int d) {
  const int h = d / 2 + 1;
  const int64_t total = rows * h;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / h;
    const int k = static_cast<int>(i - row * h);
    const float* xr = x + row * d;
    const float xk = xr[k];
    const float xn = k == 0 ? 0.f : xr[d - k];
    const float2 w = tw[k];
    // (xk − i xn)(w.x + i w.y)
    W[i] = make_float2(xk * w.x + xn * w.y, xk * w.y - xn * w.x);
  }
}

// E values per lane (d <= 32 E): lane holds m = lane + 32 e. s holds v on entry; each row is read in full by its warp before
// any lane writes it.
template <int E>
__global__ void __launch_bounds__(kThreads)
    dct3_post_kernel(float* s, const float* __restrict__ t, int64_t rows, int d, bool softmax) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (static_cast<int64_t>(gridDim.x) * blockDim.x) >> 5;
  float tv[E];
  int src[E];
#pragma unroll
  for (int e = 0; e < E; ++e) {
    const int m = lane + 32 * e;
    tv[e] = m < d ? t[m] : 0.f;
    src[e] = (m & 1) ? d - 1 - (m >> 1) : (m >> 1);
  }
  for (int64_t row = warp; row < rows; row += warps) {  // warp-uniform
    float* r = s + row * d;
    float z[E];
    float mx = -INFINITY;
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int m = lane + 32 * e;
      z[e] = m < d ? r[src[e]] * tv[e] : -INFINITY;
      mx = fmaxf(mx, z[e]);
    }
    __syncwarp();  // the whole row of v is read before any of it is overwritten
    if (softmax) {
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
      float sum = 0.f;
#pragma unroll
      for (int e = 0; e < E; ++e) {
        z[e] = lane + 32 * e < d ? expf(z[e] - mx) : 0.f;
        sum += z[e];
      }
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, off);
      const float inv = 1.f / sum;
#pragma unroll
      for (int e = 0; e < E; ++e) z[e] *= inv;
    }
#pragma unroll
    for (int e = 0; e < E; ++e) {
      const int m = lane + 32 * e;
      if (m < d) r[m] = z[e];
    }
  }
}

int grid_for(int64_t threads, int cap) {
  const int64_t blocks = (threads + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(blocks, cap)));
}

}  // namespace

DctFeatureMap::DctFeatureMap(int64_t rows, int64_t d, const std::vector<float>& t, cudaStream_t stream)
    : rows_(rows), d_(d), stream_(stream) {
  if (rows < 0) throw std::invalid_argument("DctFeatureMap: rows must be >= 0");
  if (d < 2 || d > 256 || d % 2 != 0) throw std::invalid_argument("DctFeatureMap: d must be even, 2..256");
  if (static_cast<int64_t>(t.size()) != d) throw std::invalid_argument("DctFeatureMap: t must have d values");
  const int64_t h = d / 2 + 1;
  // cufftPlanMany takes int batch and distances; keep every index of the batch inside int too.
  if (rows * 2 * h > std::numeric_limits<int>::max())
    throw std::invalid_argument("DctFeatureMap: rows * (d + 2) must fit in an int");
  try {
    int device = 0, sms = 0;
    DJ_CUDA(cudaGetDevice(&device));
    DJ_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    blocks_ = std::max(sms, 1) * kBlocksPerSm;

    // Twiddles in double, rounded once: tw_0 = √(1/d), tw_k = (cos, sin)(πk / (2d)) / √(2d).
    std::vector<float2> tw(static_cast<size_t>(h));
    const double pi = 3.14159265358979323846;
    const double dd = static_cast<double>(d), scale = 1.0 / std::sqrt(2.0 * dd);
    tw[0] = make_float2(static_cast<float>(std::sqrt(1.0 / dd)), 0.f);
    for (int64_t k = 1; k < h; ++k) {
      const double angle = pi * static_cast<double>(k) / (2.0 * dd);
      tw[static_cast<size_t>(k)] =
          make_float2(static_cast<float>(scale * std::cos(angle)), static_cast<float>(scale * std::sin(angle)));
    }
    DJ_CUDA(cudaMalloc(&twiddle_, tw.size() * sizeof(float2)));
    DJ_CUDA(cudaMemcpy(twiddle_, tw.data(), tw.size() * sizeof(float2), cudaMemcpyHostToDevice));
    DJ_CUDA(cudaMalloc(reinterpret_cast<void**>(&t_), t.size() * sizeof(float)));
    DJ_CUDA(cudaMemcpy(t_, t.data(), t.size() * sizeof(float), cudaMemcpyHostToDevice));
    if (rows == 0) return;

    spectrum_bytes_ = static_cast<size_t>(rows * h) * sizeof(cufftComplex);
    DJ_CUDA(cudaMalloc(&spectrum_, spectrum_bytes_));
    // Rank 1, length d: input element k of transform b at W[b * (d/2 + 1) + k], output element n
    // at v[b * d + n] (both strides 1). For rank 1 the embed sizes only mark the layout as
    // advanced; the distances carry it.
    int n[1] = {static_cast<int>(d)};
    int inembed[1] = {static_cast<int>(h)};
    int onembed[1] = {static_cast<int>(d)};
    cufftHandle plan = 0;
    DJ_CUFFT(cufftPlanMany(&plan, 1, n, inembed, 1, static_cast<int>(h), onembed, 1, static_cast<int>(d),
                           CUFFT_C2R, static_cast<int>(rows)));
    plan_ = plan;
    have_plan_ = true;
    DJ_CUFFT(cufftSetStream(plan, stream));
    size_t work = 0;
    DJ_CUFFT(cufftGetSize(plan, &work));
    work_bytes_ = work;
  } catch (...) {
    release();
    throw;
  }
}

DctFeatureMap::~DctFeatureMap() { release(); }

void DctFeatureMap::release() noexcept {
  if (have_plan_) cufftDestroy(plan_);
  have_plan_ = false;
  if (spectrum_) cudaFree(spectrum_);
  if (twiddle_) cudaFree(twiddle_);
  if (t_) cudaFree(t_);
  spectrum_ = twiddle_ = nullptr;
  t_ = nullptr;
}

void DctFeatureMap::pre(const float* x) const {
  if (rows_ == 0) return;
  const int64_t total = rows_ * (d_ / 2 + 1);
  dj::cuda::launch("dct3_pre_kernel", dct3_pre_kernel, grid_for(total, blocks_), kThreads, 0, stream_,
                   static_cast<float2*>(spectrum_), x, static_cast<const float2*>(twiddle_), rows_,
                   static_cast<int>(d_));
}

void DctFeatureMap::fft(float* v) const {
  if (rows_ == 0) return;
  DJ_CUFFT(cufftExecC2R(plan_, static_cast<cufftComplex*>(spectrum_), v));
}

void DctFeatureMap::post(float* s, bool softmax) const {
  if (rows_ == 0) return;
  const int blocks = grid_for(rows_ * 32, blocks_);
  auto kernel = d_ <= 64 ? dct3_post_kernel<2> : d_ <= 128 ? dct3_post_kernel<4> : dct3_post_kernel<8>;
  dj::cuda::launch("dct3_post_kernel", kernel, blocks, kThreads, 0, stream_, s, t_, rows_, static_cast<int>(d_),
                   softmax);
}

void DctFeatureMap::forward(float* s, const float* x) const {
  pre(x);
  fft(s);
  post(s, true);
}

void DctFeatureMap::project(float* z, const float* x) const {
  pre(x);
  fft(z);
  post(z, false);
}

}  // namespace dj::gpucheck
