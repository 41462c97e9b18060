// The DiJiang feature map s = softmax(x · P), P = C · diag(t), computed through cuFFT instead of
// the stored P: x · C is an orthonormal DCT-III (the inverse DCT-II) of each row, done as one
// batched length-d complex-to-real FFT between two kernels (check_dct_cufft.cu; the comparison and
// the benchmark against dj::cuda::feature_map_forward are in check_dct.cpp).
//
// Construction (Makhoul's length-d DCT through a real FFT). With a_k = s_k x_k (s_0 = √(1/d),
// s_k = √(2/d)), y_m = Σ_k a_k cos(π k (2m + 1) / (2d)) is (x · C)_m. Let b_0 = a_0, b_k = a_k / 2
// (k >= 1), b_d = 0, and
//     W_k = (b_k − i b_{d−k}) e^{iπk/(2d)},  k = 0 .. d/2.
// W is the half spectrum of a Hermitian sequence (W_{d−k} = conj W_k), so the unnormalised inverse
// real FFT v_n = Σ_{k<d} W_k e^{2πikn/d} is real, and y_{2n} = v_n, y_{2n+1} = v_{d−1−n}.
//   1. pre kernel: x [rows, d] -> W [rows, d/2 + 1] complex (the s_k / 2 folded into the twiddles);
//   2. cufftExecC2R, one plan of `rows` transforms of length d (input stride 1, distance d/2 + 1;
//      output stride 1, distance d), writing v into the output s;
//   3. post kernel, one warp per row, in place on s: y_m = v_{perm(m)}, z = y ⊙ t, softmax.
// Memory: x read once, W written and read (4 (d + 2) bytes per row each), v written and read, s
// written: about three times the traffic of the fused GEMM kernel, which reads x and writes s.
//
// Host header (no CUDA-only syntax). fp32 only; d even, 2..256. The object owns its plan and
// scratch and serves one shape; calls are queued on its stream.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dj::gpucheck {

class DctFeatureMap {
 public:
  // t: the d values of diag(t) (host). Builds the cuFFT plan for `rows` rows of length d and
  // allocates its scratch. Throws std::invalid_argument for a shape it does not serve,
  // std::runtime_error for a CUDA or cuFFT failure.
  DctFeatureMap(int64_t rows, int64_t d, const std::vector<float>& t, cudaStream_t stream);
  ~DctFeatureMap();
  DctFeatureMap(const DctFeatureMap&) = delete;
  DctFeatureMap& operator=(const DctFeatureMap&) = delete;

  // s = softmax(x · C · diag(t)) per row; s, x: device [rows, d]. s may alias x (x is read in full
  // by the first pass, before anything is written to s).
  void forward(float* s, const float* x) const;
  // z = x · C · diag(t), without the softmax (to tell the transform's error from the softmax's).
  void project(float* z, const float* x) const;

  // The three passes of forward, for timing them one by one: pre (x -> W), fft (W -> v, v: device
  // [rows, d]; W is overwritten), post (v -> s in place, with or without the softmax).
  void pre(const float* x) const;
  void fft(float* v) const;
  void post(float* s, bool softmax) const;

  int64_t rows() const { return rows_; }
  int64_t d() const { return d_; }
  // Device memory beyond the output: the half spectra W and cuFFT's work area.
  size_t scratch_bytes() const { return spectrum_bytes_ + work_bytes_; }

 private:
  void release() noexcept;

  int64_t rows_ = 0, d_ = 0;
  cudaStream_t stream_ = nullptr;
  int plan_ = 0;  // cufftHandle
  bool have_plan_ = false;
  void* spectrum_ = nullptr;  // cufftComplex [rows, d/2 + 1]
  void* twiddle_ = nullptr;   // float2 [d/2 + 1]: the s_k / 2 scaled e^{iπk/(2d)}
  float* t_ = nullptr;        // [d]
  size_t spectrum_bytes_ = 0, work_bytes_ = 0;
  int blocks_ = 0;  // grid of the grid-stride kernels
};

}  // namespace dj::gpucheck
