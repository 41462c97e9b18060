#include "kernels/cpu/layernorm.h"

#include <algorithm>
#include <cmath>

namespace dj::cpu {

namespace {

// Columns per task in the dw/db reduction (see layernorm_backward).
constexpr int64_t kColumnChunk = 64;
// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

}  // namespace

template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows,
                       int64_t channels, double eps) {
  // Statistics are taken in double with two passes (mean, then squared deviations): exact
  // enough to be the reference for float inputs, and immune to the cancellation of E[x^2]-E[x]^2.
#pragma omp parallel for schedule(static) if (rows * channels > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * channels;
    double sum = 0.0;
    for (int64_t c = 0; c < channels; ++c) sum += static_cast<double>(xr[c]);
    const double mu = sum / static_cast<double>(channels);
    double sq = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      const double dev = static_cast<double>(xr[c]) - mu;
      sq += dev * dev;
    }
    const double rs = 1.0 / std::sqrt(sq / static_cast<double>(channels) + eps);
    mean[r] = static_cast<T>(mu);
    rstd[r] = static_cast<T>(rs);
    T* yr = y + r * channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double xhat = (static_cast<double>(xr[c]) - mu) * rs;
      yr[c] = static_cast<T>(xhat * static_cast<double>(w[c]) + static_cast<double>(b[c]));
    }
  }
}

template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean,
                        const T* rstd, int64_t rows, int64_t channels) {
  const double inv_c = 1.0 / static_cast<double>(channels);
  if (dx != nullptr) {
    // With g = dy * w and xhat the normalised input,
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
#pragma omp parallel for schedule(static) if (rows * channels > kParallelThreshold)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * channels;
      const T* dyr = dy + r * channels;
      const double mu = static_cast<double>(mean[r]);
      const double rs = static_cast<double>(rstd[r]);
      double g_sum = 0.0;
      double gx_sum = 0.0;
      for (int64_t c = 0; c < channels; ++c) {
        const double g = static_cast<double>(dyr[c]) * static_cast<double>(w[c]);
        g_sum += g;
        gx_sum += g * (static_cast<double>(xr[c]) - mu) * rs;
      }
      const double g_mean = g_sum * inv_c;
      const double gx_mean = gx_sum * inv_c;
      T* dxr = dx + r * channels;
      for (int64_t c = 0; c < channels; ++c) {
        const double g = static_cast<double>(dyr[c]) * static_cast<double>(w[c]);
        const double xhat = (static_cast<double>(xr[c]) - mu) * rs;
        dxr[c] = static_cast<T>(static_cast<double>(dxr[c]) + rs * (g - g_mean - xhat * gx_mean));
      }
    }
  }
  if (dw != nullptr || db != nullptr) {
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
        const T* xr = x + r * channels;
        const T* dyr = dy + r * channels;
        const double mu = static_cast<double>(mean[r]);
        const double rs = static_cast<double>(rstd[r]);
        for (int64_t c = c0; c < c1; ++c) {
          const double g = static_cast<double>(dyr[c]);
          w_sums[c - c0] += g * (static_cast<double>(xr[c]) - mu) * rs;
          b_sums[c - c0] += g;
        }
      }
      for (int64_t c = c0; c < c1; ++c) {
        if (dw != nullptr) dw[c] = static_cast<T>(static_cast<double>(dw[c]) + w_sums[c - c0]);
        if (db != nullptr) db[c] = static_cast<T>(static_cast<double>(db[c]) + b_sums[c - c0]);
      }
    }
  }
}

#define DJ_INSTANTIATE(T)                                                                        \
  template void layernorm_forward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t, \
                                     double);                                                    \
  template void layernorm_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,        \
                                      const T*, int64_t, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
