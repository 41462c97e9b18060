#include "kernels/cpu/gelu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>
#include <type_traits>

#include "kernels/cpu/simd.h"
#include "kernels/cpu/vector_exp.h"

namespace dj::cpu {

namespace {

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

// Constants of the tanh approximation: gelu(x) ~ 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
constexpr double kTanhCubic = 0.044715;
constexpr double kSqrt2OverPi = std::numbers::sqrt2 * std::numbers::inv_sqrtpi;
constexpr double kInvSqrt2 = 1.0 / std::numbers::sqrt2;
constexpr double kInvSqrt2Pi = std::numbers::inv_sqrtpi / std::numbers::sqrt2;  // normal pdf at 0

template <typename T>
T gelu_value(T x, GeluKind kind) {
  if (kind == GeluKind::Erf) return T(0.5) * x * (T(1) + std::erf(x * T(kInvSqrt2)));
  const T u = T(kSqrt2OverPi) * (x + T(kTanhCubic) * x * x * x);
  return T(0.5) * x * (T(1) + std::tanh(u));
}

template <typename T>
T gelu_derivative(T x, GeluKind kind) {
  if (kind == GeluKind::Erf) {
    // d/dx [x Phi(x)] = Phi(x) + x phi(x).
    const T cdf = T(0.5) * (T(1) + std::erf(x * T(kInvSqrt2)));
    const T pdf = T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
    return cdf + x * pdf;
  }
  const T u = T(kSqrt2OverPi) * (x + T(kTanhCubic) * x * x * x);
  const T th = std::tanh(u);
  const T du = T(kSqrt2OverPi) * (T(1) + T(3 * kTanhCubic) * x * x);
  return T(0.5) * (T(1) + th) + T(0.5) * x * (T(1) - th * th) * du;
}

// ---- the exact GELU in float, on SIMD lanes ----------------------------------------------------
// glibc's erff and expf are scalar calls, and the MLP's GELU (forward, and backward with one more
// exp) took as long as all the other elementwise work of a training step together. The float
// path computes Phi(x) = P(N(0,1) <= x) on SIMD lanes (GCC vector extensions: 16 bytes on any
// build, 32 with AVX2 where the CPU has it, simd.h) with the exp of vector_exp.h. Its error is
// within 2.5e-7 of Phi relative to Phi and to 1 - Phi, so the left tail (Phi small) is more
// accurate than 0.5 (1 + erff(x / sqrt 2)), which cancels there. Every element takes the same
// code path, whatever its position, the thread count or the vector width. The double path keeps
// the libm functions (it is the reference).
template <int Bytes>
using FloatLanes = vector_exp_detail::Simd<float, Bytes>;

// Below this |x| Phi comes from its Maclaurin series, above it from erfc.
constexpr float kSeriesLimit = 0.75f;

// cdf = Phi(x) on each lane (vectors by reference: see exp_lanes).
template <int Bytes>
[[gnu::always_inline]] inline void normal_cdf_lanes(const typename FloatLanes<Bytes>::V& x,
                                                    typename FloatLanes<Bytes>::V& cdf) {
  using V = typename FloatLanes<Bytes>::V;
  // |x| < 0.75: Phi(x) = 1/2 + x/sqrt(2 pi) sum_n (-1)^n x^(2n) / (2^n n! (2n+1)), to n = 6
  // (the first term left out is below 2e-9).
  const V s = x * x;
  V q = V{} + static_cast<float>(1.0 / 599040.0);
  q = q * s - static_cast<float>(1.0 / 42240.0);
  q = q * s + static_cast<float>(1.0 / 3456.0);
  q = q * s - static_cast<float>(1.0 / 336.0);
  q = q * s + static_cast<float>(1.0 / 40.0);
  q = q * s - static_cast<float>(1.0 / 6.0);
  q = q * s + 1.0f;
  const V series = 0.5f + x * (static_cast<float>(kInvSqrt2Pi) * q);
  // Otherwise, with z = |x| / sqrt 2: erfc(z) = t exp(-z^2 + c(t)), t = 1 / (1 + z/2), c the
  // Chebyshev fit of Numerical Recipes (erfcc, fractional error below 1.2e-7 for every z >= 0);
  // Phi(x) = erfc(z) / 2 for x < 0 and 1 - erfc(z) / 2 for x > 0.
  const V z = (x < 0.0f ? -x : x) * static_cast<float>(kInvSqrt2);
  const V t = 1.0f / (1.0f + 0.5f * z);
  V c = V{} + 0.17087277f;
  c = c * t - 0.82215223f;
  c = c * t + 1.48851587f;
  c = c * t - 1.13520398f;
  c = c * t + 0.27886807f;
  c = c * t - 0.18628806f;
  c = c * t + 0.09678418f;
  c = c * t + 0.37409196f;
  c = c * t + 1.00002368f;
  c = c * t - 1.26551223f;
  V e = c - z * z;
  vector_exp_detail::exp_lanes<float, Bytes>(e);
  const V half_erfc = 0.5f * t * e;
  const V tail = x < 0.0f ? half_erfc : 1.0f - half_erfc;
  cdf = (x < 0.0f ? -x : x) < kSeriesLimit ? series : tail;
}

// pdf = phi(x), the standard normal density, on each lane.
template <int Bytes>
[[gnu::always_inline]] inline void normal_pdf_lanes(const typename FloatLanes<Bytes>::V& x,
                                                    typename FloatLanes<Bytes>::V& pdf) {
  pdf = -0.5f * x * x;
  vector_exp_detail::exp_lanes<float, Bytes>(pdf);
  pdf = static_cast<float>(kInvSqrt2Pi) * pdf;
}

// One vector of gelu(x) (Backward false) or dy gelu'(x) (Backward true), at x, dy and y.
template <int Bytes, bool Backward>
[[gnu::always_inline]] inline void gelu_vector(const float* x, const float* dy, float* y) {
  using V = typename FloatLanes<Bytes>::V;
  V v, cdf, r;
  std::memcpy(&v, x, sizeof v);
  normal_cdf_lanes<Bytes>(v, cdf);
  if constexpr (Backward) {
    V g, pdf;
    std::memcpy(&g, dy, sizeof g);
    normal_pdf_lanes<Bytes>(v, pdf);
    r = g * (cdf + v * pdf);
  } else {
    r = v * cdf;
  }
  std::memcpy(y, &r, sizeof r);
}

// y = gelu(x) (Backward false) or y = dy gelu'(x) (Backward true) for elements [begin, end) on
// Bytes-wide lanes; the ragged end goes through the same code, zero-padded.
template <int Bytes, bool Backward>
[[gnu::always_inline]] inline void gelu_range_lanes(float* y, const float* x, const float* dy, int64_t begin,
                                                    int64_t end) {
  constexpr int kLanes = FloatLanes<Bytes>::kLanes;
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) gelu_vector<Bytes, Backward>(x + i, Backward ? dy + i : nullptr, y + i);
  if (i == end) return;
  float px[kLanes] = {}, pg[kLanes] = {}, py[kLanes];
  std::copy(x + i, x + end, px);
  if constexpr (Backward) std::copy(dy + i, dy + end, pg);
  gelu_vector<Bytes, Backward>(px, pg, py);
  std::copy(py, py + (end - i), y + i);
}

template <bool Backward>
void gelu_range_16(float* y, const float* x, const float* dy, int64_t begin, int64_t end) {
  gelu_range_lanes<16, Backward>(y, x, dy, begin, end);
}
#if DJ_SIMD_DISPATCH
template <bool Backward>
[[gnu::target("avx2")]] void gelu_range_32(float* y, const float* x, const float* dy, int64_t begin, int64_t end) {
  gelu_range_lanes<32, Backward>(y, x, dy, begin, end);
}
#endif

// The float exact GELU over n elements, in blocks spread over the threads.
template <bool Backward>
void gelu_float(float* y, const float* x, const float* dy, int64_t n) {
  constexpr int64_t kBlock = 1 << 14;  // a multiple of every lane count
  auto range = gelu_range_16<Backward>;
#if DJ_SIMD_DISPATCH
  if (simd_width() == SimdWidth::Bytes32) range = gelu_range_32<Backward>;
#endif
  const int64_t blocks = (n + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t b = 0; b < blocks; ++b) range(y, x, dy, b * kBlock, std::min(n, (b + 1) * kBlock));
}

}  // namespace

template <typename T>
void gelu_forward(T* y, const T* x, int64_t n, GeluKind kind) {
  if constexpr (std::is_same_v<T, float>) {
    if (kind == GeluKind::Erf) {
      gelu_float<false>(y, x, nullptr, n);
      return;
    }
  }
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_value(x[i], kind);
}

template <typename T>
void gelu_backward(T* dx, const T* dy, const T* x, int64_t n, GeluKind kind) {
  // Reads dy[i] before writing dx[i] at the same index, so dx may alias dy.
  if constexpr (std::is_same_v<T, float>) {
    if (kind == GeluKind::Erf) {
      gelu_float<true>(dx, x, dy, n);
      return;
    }
  }
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * gelu_derivative(x[i], kind);
}

#define DJ_INSTANTIATE(T)                                         \
  template void gelu_forward<T>(T*, const T*, int64_t, GeluKind); \
  template void gelu_backward<T>(T*, const T*, const T*, int64_t, GeluKind);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
