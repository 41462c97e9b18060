// Internal to the CPU decayed attention (kernels/cpu/decay_attention*.cpp): what the three forms
// share (decay powers, the serial GEMM for use inside OpenMP regions, the decay mask of a tile,
// the per-row views) and the entry point of each form, defined in its own file:
//   decay_attention_parallel.cpp   the parallel form, the reference (quadratic in n);
//   decay_attention_chunkwise.cpp  the chunkwise form (the training path) and the prefill state;
//   decay_attention_recurrent.cpp  the recurrent form and the decoding step.
// decay_attention.cpp checks arguments and dispatches on DecayForm. See dijiang.h for the ops.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/gemm.h"

namespace dj::cpu::decay {

// Problems with fewer multiply-adds than this run on one thread.
constexpr int64_t kParallelWork = 1 << 18;

// OpenBLAS (the pthreads build) runs a product on the calling thread when M*N*K <= 262144 and
// wakes its own thread pool otherwise. Called from inside an OpenMP region, that pool fights the
// OpenMP threads for the cores: the chunkwise forward with chunk 128 at m = dv = 64 (products of
// 128 x 128 x 64) ran 30x slower than with every product kept on its calling thread.
constexpr int64_t kSerialBlasWork = 262144;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// gemm for use inside the OpenMP regions: products above kSerialBlasWork are cut into pieces
// that OpenBLAS keeps on the calling thread (see kSerialBlasWork). Pieces split M when op(A) = A
// (rows of A and C are contiguous), and K when op(A) = Aᵀ and op(B) = B (rows of both stored
// operands are contiguous; the pieces accumulate with beta = 1). Aᵀ Bᵀ, which no caller needs,
// runs whole.
template <typename T>
void serial_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                 const T* A, const T* B, T beta, T* C) {
  if (M * N * K <= kSerialBlasWork || (trans_a && trans_b)) {
    gemm<T>(trans_a, trans_b, M, N, K, alpha, A, B, beta, C);
  } else if (!trans_a) {
    const int64_t rows = std::max<int64_t>(1, kSerialBlasWork / (N * K));
    for (int64_t r0 = 0; r0 < M; r0 += rows)
      gemm<T>(false, trans_b, std::min(rows, M - r0), N, K, alpha, A + r0 * K, B, beta,
              C + r0 * N);
  } else {
    const int64_t depth = std::max<int64_t>(1, kSerialBlasWork / (M * N));
    for (int64_t k0 = 0; k0 < K; k0 += depth)
      gemm<T>(true, false, M, N, std::min(depth, K - k0), alpha, A + k0 * M, B + k0 * N,
              k0 == 0 ? beta : T(1), C);
  }
}

// powers[h * count + k] = γ_h^k = exp(k log γ_h) for k < count: each power straight from the
// exponential (no repeated multiplication, so no accumulated rounding), computed in double.
// Powers below T's smallest normal number are flushed to 0: the terms they scale are lost in
// the rounding of any output of ordinary size anyway, subnormal operands cost microcode assists
// on x86, and the exact zeros let the parallel form skip tiles beyond the underflow earlier
// (parallel form, float, n = 4096, H = 8 of the reference schedule: 1.5 s -> 1.1 s).
template <typename T>
std::vector<T> decay_powers(const T* log_gamma, int64_t H, int64_t count) {
  std::vector<T> powers(static_cast<size_t>(H * count));
  for (int64_t h = 0; h < H; ++h)
    for (int64_t k = 0; k < count; ++k) {
      const auto power = static_cast<T>(
          std::exp(static_cast<double>(k) * static_cast<double>(log_gamma[h])));
      powers[static_cast<size_t>(h * count + k)] =
          power < std::numeric_limits<T>::min() ? T(0) : power;
    }
  return powers;
}

// out[r, :] = factor(r) · in[r, :] for r < rows.
template <typename T, typename Factor>
void scale_rows(T* out, const T* in, int64_t rows, int64_t cols, Factor factor) {
  for (int64_t r = 0; r < rows; ++r) {
    const T f = factor(r);
    for (int64_t c = 0; c < cols; ++c) out[r * cols + c] = f * in[r * cols + c];
  }
}

// ⟨a, b⟩ over n values, summed in double.
template <typename T>
double dot(const T* a, const T* b, int64_t n) {
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return sum;
}

// Applies the decay mask M to one [rows, cols] tile of scores Q Kᵀ in place: the entry of query
// row r and key column c has relative exponent e = offset + r − c and becomes
// scores · γ^e when e >= 0 and 0 when e < 0 (a future key). `powers` holds γ^0 .. γ^(max e).
//
// With grad_scores (the same tile of dO Vᵀ) it is masked the same way, giving dA = (dO Vᵀ) ⊙ M,
// and the return value is the tile's part of dL/dlog γ: Σ_{e>=0} e · A_rc · (dO Vᵀ)_rc, where
// A_rc = (Q Kᵀ)_rc γ^e is the masked score (d γ^e / dlog γ = e γ^e).
template <typename T>
double apply_decay_mask(T* scores, T* grad_scores, int64_t rows, int64_t cols, int64_t offset,
                        const T* powers) {
  double dlog_gamma = 0.0;
  for (int64_t r = 0; r < rows; ++r) {
    // Columns c < visible have e >= 0.
    const int64_t visible = std::clamp<int64_t>(offset + r + 1, 0, cols);
    T* s = scores + r * cols;
    T* g = grad_scores != nullptr ? grad_scores + r * cols : nullptr;
    for (int64_t c = 0; c < visible; ++c) {
      const int64_t e = offset + r - c;
      s[c] *= powers[e];
      if (g != nullptr) {
        dlog_gamma +=
            static_cast<double>(e) * static_cast<double>(s[c]) * static_cast<double>(g[c]);
        g[c] *= powers[e];
      }
    }
    std::fill(s + visible, s + cols, T(0));
    if (g != nullptr) std::fill(g + visible, g + cols, T(0));
  }
  return dlog_gamma;
}

// Adds each row's dlog γ (summed in double, in row order) to its head's entry.
template <typename T>
void add_dlog_gamma(T* dlog_gamma, const std::vector<double>& per_row, int64_t H) {
  std::vector<double> per_head(static_cast<size_t>(H), 0.0);
  for (size_t bh = 0; bh < per_row.size(); ++bh)
    per_head[bh % static_cast<size_t>(H)] += per_row[bh];
  for (int64_t h = 0; h < H; ++h) {
    const double sum = static_cast<double>(dlog_gamma[h]) + per_head[static_cast<size_t>(h)];
    dlog_gamma[h] = static_cast<T>(sum);
  }
}

// The tensors of one (batch, head) row; `row` moves the pointers from row 0 to row bh.
template <typename T>
struct ForwardRow {
  T* o;
  const T *fq, *fk, *v;
  int64_t n, m, dv;
  ForwardRow row(int64_t bh) const {
    return {o + bh * n * dv, fq + bh * n * m, fk + bh * n * m, v + bh * n * dv, n, m, dv};
  }
};

template <typename T>
struct BackwardRow {
  T *dfq, *dfk, *dv;
  const T *dout, *fq, *fk, *v;
  int64_t n, m, dv_size;
  BackwardRow row(int64_t bh) const {
    const int64_t qk = bh * n * m, vo = bh * n * dv_size;
    return {dfq + qk, dfk + qk, dv + vo, dout + vo, fq + qk, fk + qk, v + vo, n, m, dv_size};
  }
};

template <typename T>
T gamma_of(const T* log_gamma, int64_t h) {
  return static_cast<T>(std::exp(static_cast<double>(log_gamma[h])));
}

inline void check_shapes(const char* what, int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv) {
  if (BH < 0 || H < 1 || n < 0 || m < 1 || dv < 1)
    fail("{}: invalid shape BH = {}, H = {}, n = {}, m = {}, dv = {}", what, BH, H, n, m, dv);
}

inline void check_chunk(const char* what, int64_t chunk) {
  if (chunk < 1) fail("{}: chunk must be at least 1, got {}", what, chunk);
}

// The forms, over every (batch, head) row of `all` (row bh belongs to head bh % H), the rows
// handed out to OpenMP threads whole when `threaded`. The backward passes write row bh's part of
// dL/dlog γ to row_dlog[bh] (summed per head by add_dlog_gamma, in row order).
template <typename T>
void parallel_forward(const ForwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded);
template <typename T>
void parallel_backward(const BackwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded,
                       double* row_dlog);
template <typename T>
void chunkwise_forward(const ForwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, int64_t chunk,
                       bool threaded);
template <typename T>
void chunkwise_backward(const BackwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, int64_t chunk,
                        bool threaded, double* row_dlog);
template <typename T>
void recurrent_forward(const ForwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded);
template <typename T>
void recurrent_backward(const BackwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded,
                        double* row_dlog);

}  // namespace dj::cpu::decay
