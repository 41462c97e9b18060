#include "kernels/cpu/gelu.h"

#include <cmath>
#include <numbers>

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

}  // namespace

template <typename T>
void gelu_forward(T* y, const T* x, int64_t n, GeluKind kind) {
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) y[i] = gelu_value(x[i], kind);
}

template <typename T>
void gelu_backward(T* dx, const T* dy, const T* x, int64_t n, GeluKind kind) {
  // Reads dy[i] before writing dx[i] at the same index, so dx may alias dy.
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
