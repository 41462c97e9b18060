// The DiJiang feature map (docs/method.md, section 2 steps 3-4 and section 4):
// φ(x) = softmax(x · P) with P = C · diag(t), C the orthonormal DCT-II matrix, and the optional
// learned per-head feature weights of the paper (section 3).
//
// x · P is one GEMM with the stored P. A fast O(d log d) DCT-III of each row followed by
// diag(t) computes the same projection with ~12x fewer FLOPs at d = 64 and measured about 2x
// faster for 8 x 4096 rows on two threads (3-4.5 ms against 6-8.5 ms). The GEMM is kept all
// the same: it applies P exactly as stored (also a P read from a reference checkpoint), it works
// for any d (the radix-2 DCT needs a power of two; Pythia-2.8B has d = 80), and the projection
// is ~2% of a layer's FLOPs (Pythia-70M), next to a softmax whose exp costs as much.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/vector_exp.h"

namespace dj::cpu {

namespace {

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

}  // namespace

template <typename T>
void dct_projection(T* P, const double* t, int64_t d) {
  const double s0 = std::sqrt(1.0 / static_cast<double>(d));
  const double sk = std::sqrt(2.0 / static_cast<double>(d));
  for (int64_t k = 0; k < d; ++k)
    for (int64_t j = 0; j < d; ++j) {
      // cos(π (2j+1) k / (2d)) has period 4d in the integer (2j+1) k: reducing it first keeps
      // the argument in [0, 2π), where cos is accurate to an ulp.
      const int64_t phase = ((2 * j + 1) * k) % (4 * d);
      const double c = std::cos(std::numbers::pi * static_cast<double>(phase) /
                                static_cast<double>(2 * d));
      P[k * d + j] = static_cast<T>((k == 0 ? s0 : sk) * c * t[j]);
    }
}

template <typename T>
void feature_map_forward(T* s, const T* x, const T* P, int64_t rows, int64_t d) {
  gemm<T>(false, false, rows, d, d, T(1), x, P, T(0), s);
  // Softmax of each row, shifted by the row maximum so that every exp is <= 1.
#pragma omp parallel for schedule(static) if (rows * d > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    T* row = s + r * d;
    const double sum = exp_shifted(row, d, row_max(row, d), row);
    const T inv = static_cast<T>(1.0 / sum);
    for (int64_t j = 0; j < d; ++j) row[j] *= inv;
  }
}

template <typename T>
void feature_map_backward(T* dx, const T* ds, const T* s, const T* P, int64_t rows, int64_t d) {
  // Softmax backward (section 4): dz = s ⊙ (ds − ⟨s, ds⟩), then z = x · P gives dx = dz · Pᵀ.
  std::vector<T> dz(static_cast<size_t>(rows * d));
#pragma omp parallel for schedule(static) if (rows * d > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* s_row = s + r * d;
    const T* ds_row = ds + r * d;
    double inner = 0.0;
    for (int64_t j = 0; j < d; ++j)
      inner += static_cast<double>(s_row[j]) * static_cast<double>(ds_row[j]);
    T* dz_row = dz.data() + r * d;
    for (int64_t j = 0; j < d; ++j) dz_row[j] = s_row[j] * (ds_row[j] - static_cast<T>(inner));
  }
  gemm<T>(false, true, rows, d, d, T(1), dz.data(), P, T(0), dx);
}

template <typename T>
void feature_weights_forward(T* phi, const T* s, const T* w, int64_t BH, int64_t H, int64_t n,
                             int64_t d) {
#pragma omp parallel for schedule(static) if (BH * n * d > kParallelThreshold)
  for (int64_t row = 0; row < BH * n; ++row) {
    const T* wh = w + ((row / n) % H) * d;
    for (int64_t j = 0; j < d; ++j) phi[row * d + j] = wh[j] * s[row * d + j];
  }
}

template <typename T>
void feature_weights_backward(T* ds, T* dw, const T* dphi, const T* s, const T* w, int64_t BH,
                              int64_t H, int64_t n, int64_t d) {
  // dw[h] sums over the rows of head h, each head on one thread, rows in order, in double: the
  // result does not depend on the thread count.
#pragma omp parallel if (BH * n * d > kParallelThreshold)
  {
    std::vector<double> sums(static_cast<size_t>(d));
#pragma omp for schedule(static)
    for (int64_t h = 0; h < H; ++h) {
      std::fill(sums.begin(), sums.end(), 0.0);
      for (int64_t bh = h; bh < BH; bh += H)
        for (int64_t i = 0; i < n; ++i) {
          const int64_t at = (bh * n + i) * d;
          for (int64_t j = 0; j < d; ++j)
            sums[static_cast<size_t>(j)] +=
                static_cast<double>(dphi[at + j]) * static_cast<double>(s[at + j]);
        }
      for (int64_t j = 0; j < d; ++j)
        dw[h * d + j] =
            static_cast<T>(static_cast<double>(dw[h * d + j]) + sums[static_cast<size_t>(j)]);
    }
  }
  // ds = w[h] ⊙ dphi, after dw has read dphi: ds may alias dphi.
  feature_weights_forward(ds, dphi, w, BH, H, n, d);
}

#define DJ_INSTANTIATE(T)                                                                        \
  template void dct_projection<T>(T*, const double*, int64_t);                                   \
  template void feature_map_forward<T>(T*, const T*, const T*, int64_t, int64_t);                \
  template void feature_map_backward<T>(T*, const T*, const T*, const T*, int64_t, int64_t);     \
  template void feature_weights_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t,    \
                                           int64_t);                                             \
  template void feature_weights_backward<T>(T*, T*, const T*, const T*, const T*, int64_t,       \
                                            int64_t, int64_t, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
