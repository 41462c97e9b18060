// GroupNorm over the merged head outputs (docs/method.md, section 2 step 7): each
// row of `channels` values is split into `groups` groups of channels / groups consecutive
// channels, each normalised with its own mean and biased variance, then a per-channel affine.
// The DiJiang default is groups = d over channels = H d, so each group holds H consecutive
// channels and mixes neighbouring features of different heads, as the reference code does.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/core/error.h"
#include "kernels/cpu/dijiang.h"

namespace dj::cpu {

namespace {

// Columns per task in the dw/db reduction (see group_norm_backward).
constexpr int64_t kColumnChunk = 64;
// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

void check_groups(const char* what, int64_t channels, int64_t groups) {
  if (groups < 1 || channels % groups != 0)
    fail("{}: {} channels cannot be split into {} equal groups", what, channels, groups);
}

}  // namespace

template <typename T>
void group_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows,
                        int64_t channels, int64_t groups, double eps) {
  check_groups("group_norm_forward", channels, groups);
  const int64_t size = channels / groups;
  // Statistics in double with two passes (mean, then squared deviations), as layernorm_forward.
#pragma omp parallel for schedule(static) if (rows * channels > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = r * channels + g * size;
      double sum = 0.0;
      for (int64_t c = 0; c < size; ++c) sum += static_cast<double>(x[c0 + c]);
      const double mu = sum / static_cast<double>(size);
      double sq = 0.0;
      for (int64_t c = 0; c < size; ++c) {
        const double dev = static_cast<double>(x[c0 + c]) - mu;
        sq += dev * dev;
      }
      const double rs = 1.0 / std::sqrt(sq / static_cast<double>(size) + eps);
      mean[r * groups + g] = static_cast<T>(mu);
      rstd[r * groups + g] = static_cast<T>(rs);
      for (int64_t c = 0; c < size; ++c) {
        const int64_t channel = g * size + c;
        const double xhat = (static_cast<double>(x[c0 + c]) - mu) * rs;
        y[c0 + c] = static_cast<T>(xhat * static_cast<double>(w[channel]) +
                                   static_cast<double>(b[channel]));
      }
    }
  }
}

template <typename T>
void group_norm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean,
                         const T* rstd, int64_t rows, int64_t channels, int64_t groups) {
  check_groups("group_norm_backward", channels, groups);
  const int64_t size = channels / groups;
  const double inv_size = 1.0 / static_cast<double>(size);
  // Per group, with u = dy ⊙ w and xhat the normalised input:
  // dx = rstd (u − mean(u) − xhat mean(u ⊙ xhat)).
#pragma omp parallel for schedule(static) if (rows * channels > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t c0 = r * channels + g * size;
      const double mu = static_cast<double>(mean[r * groups + g]);
      const double rs = static_cast<double>(rstd[r * groups + g]);
      double u_sum = 0.0;
      double ux_sum = 0.0;
      for (int64_t c = 0; c < size; ++c) {
        const double u = static_cast<double>(dy[c0 + c]) * static_cast<double>(w[g * size + c]);
        u_sum += u;
        ux_sum += u * (static_cast<double>(x[c0 + c]) - mu) * rs;
      }
      const double u_mean = u_sum * inv_size;
      const double ux_mean = ux_sum * inv_size;
      for (int64_t c = 0; c < size; ++c) {
        const double u = static_cast<double>(dy[c0 + c]) * static_cast<double>(w[g * size + c]);
        const double xhat = (static_cast<double>(x[c0 + c]) - mu) * rs;
        dx[c0 + c] = static_cast<T>(rs * (u - u_mean - xhat * ux_mean));
      }
    }
  }
  // dw and db are sums over rows. Each task owns a fixed block of columns and walks the rows in
  // order, so there are no races and the result is bit-identical for any thread count.
  const int64_t chunks = (channels + kColumnChunk - 1) / kColumnChunk;
#pragma omp parallel for schedule(static) if (rows * channels > kParallelThreshold)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t c0 = chunk * kColumnChunk;
    const int64_t c1 = std::min(channels, c0 + kColumnChunk);
    double w_sums[kColumnChunk] = {};
    double b_sums[kColumnChunk] = {};
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t stat = r * groups + c / size;
        const double xhat = (static_cast<double>(x[r * channels + c]) -
                             static_cast<double>(mean[stat])) *
                            static_cast<double>(rstd[stat]);
        const double g = static_cast<double>(dy[r * channels + c]);
        w_sums[c - c0] += g * xhat;
        b_sums[c - c0] += g;
      }
    }
    for (int64_t c = c0; c < c1; ++c) {
      dw[c] = static_cast<T>(static_cast<double>(dw[c]) + w_sums[c - c0]);
      db[c] = static_cast<T>(static_cast<double>(db[c]) + b_sums[c - c0]);
    }
  }
}

#define DJ_INSTANTIATE(T)                                                                         \
  template void group_norm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, \
                                      int64_t, double);                                           \
  template void group_norm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                       const T*, int64_t, int64_t, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
