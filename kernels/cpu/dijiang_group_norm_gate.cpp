// GroupNorm fused with the swish gate (kernels/cpu/dijiang.h): the composition of
// group_norm_forward and silu_gate_forward, whose backward recomputes the GroupNorm output from
// the input and the saved statistics instead of keeping it.
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/dijiang.h"

namespace dj::cpu {

namespace {

// GroupNorm(x) of every row from the saved statistics: x̂ w + b, x̂ = (x − mean) rstd.
template <typename T>
void group_norm_recompute(T* out, const T* x, const T* w, const T* b, const T* mean, const T* rstd, int64_t rows,
                          int64_t channels, int64_t groups) {
  const int64_t size = channels / groups;
#pragma omp parallel for schedule(static) if (rows * channels > (1 << 15))
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t stat = r * groups + c / size;
      const double xhat = (static_cast<double>(x[r * channels + c]) - static_cast<double>(mean[stat])) *
                          static_cast<double>(rstd[stat]);
      out[r * channels + c] = static_cast<T>(xhat * static_cast<double>(w[c]) + static_cast<double>(b[c]));
    }
}

}  // namespace

template <typename T>
void group_norm_gate_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, const T* g, int64_t rows,
                             int64_t channels, int64_t groups, double eps) {
  group_norm_forward(y, mean, rstd, x, w, b, rows, channels, groups, eps);
  silu_gate_forward(y, g, y, rows * channels);
}

template <typename T>
void group_norm_gate_backward(T* dx, T* dg, T* dw, T* db, const T* dy, const T* x, const T* g, const T* w,
                              const T* b, const T* mean, const T* rstd, int64_t rows, int64_t channels,
                              int64_t groups) {
  std::vector<T> normed(static_cast<size_t>(rows * channels));
  group_norm_recompute(normed.data(), x, w, b, mean, rstd, rows, channels, groups);
  // d(GroupNorm output) overwrites `normed` once silu_gate_backward has read it.
  silu_gate_backward(dg, normed.data(), dy, g, normed.data(), rows * channels);
  group_norm_backward(dx, dw, db, normed.data(), x, w, mean, rstd, rows, channels, groups);
}

#define DJ_INSTANTIATE(T)                                                                                   \
  template void group_norm_gate_forward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, int64_t,     \
                                           int64_t, int64_t, double);                                        \
  template void group_norm_gate_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, const T*, \
                                            const T*, const T*, int64_t, int64_t, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
