// Feature maps of the normalised linear-attention baselines and their normalisation
// (kernels/cpu/linear_attention.h). Every row is computed by one thread in a fixed order, so the
// results do not depend on the thread count.
#include "kernels/cpu/linear_attention.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/gemm.h"

namespace dj::cpu {

namespace {

constexpr int64_t kParallelThreshold = 1 << 15;

// d^(−1/4), the performer's input scale: ω·x' with x' = x d^(−1/4) makes ⟨x'_q, x'_k⟩ = ⟨q, k⟩/√d.
double performer_scale(int64_t d) { return std::pow(static_cast<double>(d), -0.25); }

// cos θ and sin θ of row r's position, θ = (π/2) position / horizon, formed in double.
template <typename T>
std::pair<T, T> cosformer_weights(int64_t r, int64_t n, int64_t position0, int64_t horizon) {
  const double angle = 0.5 * std::numbers::pi * static_cast<double>(position0 + r % n) / static_cast<double>(horizon);
  return {static_cast<T>(std::cos(angle)), static_cast<T>(std::sin(angle))};
}

void check_positions(int64_t n, int64_t position0, int64_t horizon) {
  if (horizon < 1 || position0 < 0 || position0 + n > horizon)
    fail("cosformer features: positions {}..{} are outside the horizon of {} positions", position0,
         position0 + n - 1, horizon);
}

}  // namespace

int64_t linear_feature_count(LinearFeatureMap map, int64_t d) { return map == LinearFeatureMap::CosFormer ? 2 * d : d; }

template <typename T>
void linear_feature_forward(T* f, const T* x, const T* P, LinearFeatureMap map, bool query, int64_t BH, int64_t n,
                            int64_t d, int64_t position0, int64_t horizon) {
  const int64_t rows = BH * n, m = linear_feature_count(map, d);
  switch (map) {
    case LinearFeatureMap::Elu:
#pragma omp parallel for schedule(static) if (rows * d > kParallelThreshold)
      for (int64_t i = 0; i < rows * d; ++i) f[i] = x[i] > T(0) ? x[i] + T(1) : static_cast<T>(std::exp(x[i]));
      return;
    case LinearFeatureMap::CosFormer: {
      check_positions(n, position0, horizon);
#pragma omp parallel for schedule(static) if (rows * d > kParallelThreshold)
      for (int64_t r = 0; r < rows; ++r) {
        const auto [c, s] = cosformer_weights<T>(r, n, position0, horizon);
        for (int64_t j = 0; j < d; ++j) {
          const T relu = std::max(x[r * d + j], T(0));
          f[r * m + j] = relu * c;
          f[r * m + d + j] = relu * s;
        }
      }
      return;
    }
    case LinearFeatureMap::Performer: {
      const double scale = performer_scale(d);
      gemm<T>(false, false, rows, m, d, static_cast<T>(scale), x, P, T(0), f);
      const double norm = 1.0 / std::sqrt(static_cast<double>(m));
#pragma omp parallel for schedule(static) if (rows * m > kParallelThreshold)
      for (int64_t r = 0; r < rows; ++r) {
        T* row = f + r * m;
        double shift = 0.0;
        if (query) {
          shift = static_cast<double>(*std::max_element(row, row + m));
        } else {
          for (int64_t j = 0; j < d; ++j) shift += static_cast<double>(x[r * d + j]) * static_cast<double>(x[r * d + j]);
          shift *= 0.5 * scale * scale;
        }
        for (int64_t j = 0; j < m; ++j) row[j] = static_cast<T>(std::exp(static_cast<double>(row[j]) - shift) * norm);
      }
      return;
    }
  }
}

template <typename T>
void linear_feature_backward(T* dx, const T* df, const T* f, const T* x, const T* P, LinearFeatureMap map, bool query,
                             int64_t BH, int64_t n, int64_t d, int64_t position0, int64_t horizon) {
  const int64_t rows = BH * n, m = linear_feature_count(map, d);
  switch (map) {
    case LinearFeatureMap::Elu:
#pragma omp parallel for schedule(static) if (rows * d > kParallelThreshold)
      for (int64_t i = 0; i < rows * d; ++i) dx[i] = x[i] > T(0) ? df[i] : df[i] * f[i];
      return;
    case LinearFeatureMap::CosFormer: {
      check_positions(n, position0, horizon);
#pragma omp parallel for schedule(static) if (rows * d > kParallelThreshold)
      for (int64_t r = 0; r < rows; ++r) {
        const auto [c, s] = cosformer_weights<T>(r, n, position0, horizon);
        for (int64_t j = 0; j < d; ++j)
          dx[r * d + j] = x[r * d + j] > T(0) ? df[r * m + j] * c + df[r * m + d + j] * s : T(0);
      }
      return;
    }
    case LinearFeatureMap::Performer: {
      // ∂f_j/∂x' = f_j (ω_j − x') for keys, f_j ω_j for queries; x' = x d^(−1/4). With g = f ⊙ df:
      // dx = d^(−1/4) (g · Pᵀ) − [keys] d^(−1/2) x Σ_j g_j.
      const double scale = performer_scale(d);
      std::vector<T> g(static_cast<size_t>(rows * m));
      std::vector<double> sums(static_cast<size_t>(rows));
#pragma omp parallel for schedule(static) if (rows * m > kParallelThreshold)
      for (int64_t r = 0; r < rows; ++r) {
        double sum = 0.0;
        for (int64_t j = 0; j < m; ++j) {
          const T gj = f[r * m + j] * df[r * m + j];
          g[static_cast<size_t>(r * m + j)] = gj;
          sum += static_cast<double>(gj);
        }
        sums[static_cast<size_t>(r)] = sum;
      }
      gemm<T>(false, true, rows, d, m, static_cast<T>(scale), g.data(), P, T(0), dx);
      if (query) return;
#pragma omp parallel for schedule(static) if (rows * d > kParallelThreshold)
      for (int64_t r = 0; r < rows; ++r) {
        const double c = scale * scale * sums[static_cast<size_t>(r)];
        for (int64_t j = 0; j < d; ++j)
          dx[r * d + j] = static_cast<T>(static_cast<double>(dx[r * d + j]) - c * static_cast<double>(x[r * d + j]));
      }
      return;
    }
  }
}

template <typename T>
void append_ones(T* vx, const T* v, int64_t rows, int64_t dv) {
#pragma omp parallel for schedule(static) if (rows * dv > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    std::copy(v + r * dv, v + (r + 1) * dv, vx + r * (dv + 1));
    vx[r * (dv + 1) + dv] = T(1);
  }
}

template <typename T>
void drop_last_column(T* v, const T* vx, int64_t rows, int64_t dv) {
#pragma omp parallel for schedule(static) if (rows * dv > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) std::copy(vx + r * (dv + 1), vx + r * (dv + 1) + dv, v + r * dv);
}

template <typename T>
void normalize_rows_forward(T* o, const T* ox, int64_t rows, int64_t dv) {
#pragma omp parallel for schedule(static) if (rows * dv > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = ox + r * (dv + 1);
    const T den = in[dv];
    const T inv = den > T(0) ? T(1) / den : T(0);
    for (int64_t c = 0; c < dv; ++c) o[r * dv + c] = in[c] * inv;
  }
}

template <typename T>
void normalize_rows_backward(T* dox, const T* dout, const T* o, const T* ox, int64_t rows, int64_t dv) {
#pragma omp parallel for schedule(static) if (rows * dv > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    const T den = ox[r * (dv + 1) + dv];
    const T inv = den > T(0) ? T(1) / den : T(0);
    double inner = 0.0;
    for (int64_t c = 0; c < dv; ++c) {
      inner += static_cast<double>(dout[r * dv + c]) * static_cast<double>(o[r * dv + c]);
      dox[r * (dv + 1) + c] = dout[r * dv + c] * inv;
    }
    dox[r * (dv + 1) + dv] = static_cast<T>(-inner) * inv;
  }
}

#define DJ_INSTANTIATE(T)                                                                                            \
  template void linear_feature_forward<T>(T*, const T*, const T*, LinearFeatureMap, bool, int64_t, int64_t, int64_t, \
                                          int64_t, int64_t);                                                         \
  template void linear_feature_backward<T>(T*, const T*, const T*, const T*, const T*, LinearFeatureMap, bool,       \
                                           int64_t, int64_t, int64_t, int64_t, int64_t);                             \
  template void append_ones<T>(T*, const T*, int64_t, int64_t);                                                      \
  template void drop_last_column<T>(T*, const T*, int64_t, int64_t);                                                 \
  template void normalize_rows_forward<T>(T*, const T*, int64_t, int64_t);                                           \
  template void normalize_rows_backward<T>(T*, const T*, const T*, const T*, int64_t, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
