#include "kernels/cpu/gelu.h"

#include <cmath>
#include <cstring>
#include <numbers>
#include <type_traits>

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
// path computes Phi(x) = P(N(0,1) <= x) on 4 lanes (GCC vector extensions, SSE2 on any x86-64
// build) with the exp of vector_exp.h. Its error is within 2.5e-7 of Phi relative to Phi and to
// 1 - Phi, so the left tail (Phi small) is more accurate than 0.5 (1 + erff(x / sqrt 2)), which
// cancels there. Every element takes the same code path, whatever its position or the thread
// count. The double path keeps the libm functions (it is the reference).
using FloatLanes = vector_exp_detail::Simd<float>;
using VF = FloatLanes::V;
constexpr int kLanes = FloatLanes::kLanes;

// Below this |x| Phi comes from its Maclaurin series, above it from erfc.
constexpr float kSeriesLimit = 0.75f;

VF lanes_of(float value) { return VF{} + value; }

// Phi(x) on each lane.
[[gnu::always_inline]] inline VF normal_cdf_lanes(VF x) {
  // |x| < 0.75: Phi(x) = 1/2 + x/sqrt(2 pi) sum_n (-1)^n x^(2n) / (2^n n! (2n+1)), to n = 6
  // (the first term left out is below 2e-9).
  const VF s = x * x;
  VF q = lanes_of(static_cast<float>(1.0 / 599040.0));
  q = q * s - static_cast<float>(1.0 / 42240.0);
  q = q * s + static_cast<float>(1.0 / 3456.0);
  q = q * s - static_cast<float>(1.0 / 336.0);
  q = q * s + static_cast<float>(1.0 / 40.0);
  q = q * s - static_cast<float>(1.0 / 6.0);
  q = q * s + 1.0f;
  const VF series = 0.5f + x * (static_cast<float>(kInvSqrt2Pi) * q);
  // Otherwise, with z = |x| / sqrt 2: erfc(z) = t exp(-z^2 + c(t)), t = 1 / (1 + z/2), c the
  // Chebyshev fit of Numerical Recipes (erfcc, fractional error below 1.2e-7 for every z >= 0);
  // Phi(x) = erfc(z) / 2 for x < 0 and 1 - erfc(z) / 2 for x > 0.
  const VF z = (x < 0.0f ? -x : x) * static_cast<float>(kInvSqrt2);
  const VF t = 1.0f / (1.0f + 0.5f * z);
  VF c = lanes_of(0.17087277f);
  c = c * t - 0.82215223f;
  c = c * t + 1.48851587f;
  c = c * t - 1.13520398f;
  c = c * t + 0.27886807f;
  c = c * t - 0.18628806f;
  c = c * t + 0.09678418f;
  c = c * t + 0.37409196f;
  c = c * t + 1.00002368f;
  c = c * t - 1.26551223f;
  const VF half_erfc = 0.5f * t * vector_exp_detail::exp_lanes<float>(c - z * z);
  const VF tail = x < 0.0f ? half_erfc : 1.0f - half_erfc;
  return (x < 0.0f ? -x : x) < kSeriesLimit ? series : tail;
}

// phi(x), the standard normal density, on each lane.
[[gnu::always_inline]] inline VF normal_pdf_lanes(VF x) {
  return static_cast<float>(kInvSqrt2Pi) * vector_exp_detail::exp_lanes<float>(-0.5f * x * x);
}

VF load(const float* p) {
  VF v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
void store(float* p, VF v) { std::memcpy(p, &v, sizeof v); }

// out[i] = f(in lanes...) for i < n, four at a time; the ragged end goes through the same code,
// zero-padded.
template <typename F>
void map_lanes(float* out, const float* a, const float* b, int64_t n, F f) {
  const int64_t vectors = n / kLanes;
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t j = 0; j < vectors; ++j) {
    const int64_t i = j * kLanes;
    store(out + i, f(load(a + i), b != nullptr ? load(b + i) : VF{}));
  }
  const int64_t done = vectors * kLanes;
  if (done == n) return;
  float pa[kLanes] = {}, pb[kLanes] = {}, po[kLanes];
  std::copy(a + done, a + n, pa);
  if (b != nullptr) std::copy(b + done, b + n, pb);
  store(po, f(load(pa), load(pb)));
  std::copy(po, po + (n - done), out + done);
}

}  // namespace

template <typename T>
void gelu_forward(T* y, const T* x, int64_t n, GeluKind kind) {
  if constexpr (std::is_same_v<T, float>) {
    if (kind == GeluKind::Erf) {
      map_lanes(y, x, nullptr, n, [](VF v, VF) { return v * normal_cdf_lanes(v); });
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
      map_lanes(dx, x, dy, n,
                [](VF v, VF g) { return g * (normal_cdf_lanes(v) + v * normal_pdf_lanes(v)); });
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
