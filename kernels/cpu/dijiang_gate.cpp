// The swish output gate of a DiJiang layer (docs/method.md, section 2 step 8):
// y = silu(g) ⊙ x with g = a · W_G and x = GN(o).
#include <cmath>
#include <cstdint>

#include "kernels/cpu/dijiang.h"

namespace dj::cpu {

namespace {

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

// 1 / (1 + e^−g): for g → −∞ the exponential overflows to inf and the result is an exact 0.
template <typename T>
T sigmoid(T g) {
  return T(1) / (T(1) + std::exp(-g));
}

}  // namespace

template <typename T>
void silu_gate_forward(T* y, const T* g, const T* x, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) y[i] = g[i] * sigmoid(g[i]) * x[i];
}

template <typename T>
void silu_gate_backward(T* dg, T* dx, const T* dy, const T* g, const T* x, int64_t n) {
  // silu'(g) = σ(g) (1 + g (1 − σ(g))). Every input is read before an output at the same index
  // is written, so dg or dx may alias dy.
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    const T sig = sigmoid(g[i]);
    const T gi = g[i], xi = x[i], dyi = dy[i];
    dg[i] = dyi * xi * sig * (T(1) + gi * (T(1) - sig));
    dx[i] = dyi * gi * sig;
  }
}

#define DJ_INSTANTIATE(T)                                                      \
  template void silu_gate_forward<T>(T*, const T*, const T*, int64_t);         \
  template void silu_gate_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
