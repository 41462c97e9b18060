// The decayed causal linear attention of DiJiang (docs/method.md, section 2 step 6
// and section 4) in its three forms, plus the decoding step and the prefill state:
//
//   o_i = Σ_{j<=i} γ^(i−j) ⟨fq_i, fk_j⟩ v_j,   γ = exp(log γ) per head.
//
// The reference code builds this from position tables γ^i and γ^(−j); γ^(−j) overflows float
// after a few thousand tokens, so every kernel here forms only relative exponents that are >= 0
// (i − j on or below the diagonal, chunk-local offsets, the chunk length), as exp(k · log γ)
// evaluated in double. All such powers are <= 1 when γ < 1.
//
// Every form works on one (batch, head) row bh at a time, in a fixed order, and the OpenMP loops
// hand out whole rows; dlog γ is reduced per row in double and summed over rows in order. The
// results are therefore bit-identical for any thread count.
//
// The gradient of log γ: every power γ^k used by a form contributes k · γ^k · (its adjoint), i.e.
// "Σ over positions of relative exponent × contribution" (section 4). Each form below spells out
// which powers it uses; finite differences in tests/unit/test_dijiang_ops.cpp confirm each one.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/gemm.h"

namespace dj::cpu {

namespace {

// Tile edge of the parallel form.
constexpr int64_t kTile = 64;

// Problems with fewer multiply-adds than this run on one thread.
constexpr int64_t kParallelWork = 1 << 18;

// OpenBLAS (the pthreads build) runs a product on the calling thread when M*N*K <= 262144 and
// wakes its own thread pool otherwise. Called from inside an OpenMP region, that pool fights the
// OpenMP threads for the cores: the chunkwise forward with chunk 128 at m = dv = 64 (products of
// 128 x 128 x 64) ran 30x slower than with every product kept on its calling thread.
constexpr int64_t kSerialBlasWork = 262144;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

// ---------------------------------------------------------------------------------------------
// Parallel form (section 4): A = (FQ FKᵀ) ⊙ M with M_ij = γ^(i−j) for j <= i, O = A V. A is
// never held whole: it is walked in kTile x kTile tiles at or below the diagonal, which skips
// the masked upper half and keeps memory at one tile per thread; tiles so far below the
// diagonal that γ^(i−j) underflows everywhere are skipped too. `powers` holds γ^0 .. γ^(n−1).

template <typename T>
struct ParallelScratch {
  std::vector<T> scores = std::vector<T>(kTile * kTile);
  std::vector<T> grad_scores = std::vector<T>(kTile * kTile);
};

// True when every decay factor of the tile of query rows [q0, ...) and key rows [k0, k0 + nk)
// is 0, i.e. the largest one, γ^(q0 − k0 − nk + 1) at its top-right corner, underflowed (see
// decay_powers). Such a tile contributes exact zeros to every output and gradient.
template <typename T>
bool tile_vanishes(int64_t q0, int64_t k0, int64_t nk, const T* powers) {
  const int64_t nearest = q0 - (k0 + nk - 1);
  return nearest > 0 && powers[nearest] == T(0);
}

template <typename T>
void parallel_forward_row(const ForwardRow<T>& r, const T* powers, ParallelScratch<T>& s) {
  const int64_t n = r.n, m = r.m, dv = r.dv;
  std::fill(r.o, r.o + n * dv, T(0));
  for (int64_t q0 = 0; q0 < n; q0 += kTile) {
    const int64_t nq = std::min(kTile, n - q0);
    for (int64_t k0 = 0; k0 <= q0; k0 += kTile) {
      const int64_t nk = std::min(kTile, n - k0);
      if (tile_vanishes(q0, k0, nk, powers)) continue;
      T* A = s.scores.data();
      serial_gemm<T>(false, true, nq, nk, m, T(1), r.fq + q0 * m, r.fk + k0 * m, T(0), A);
      apply_decay_mask<T>(A, nullptr, nq, nk, q0 - k0, powers);
      serial_gemm<T>(false, false, nq, dv, nk, T(1), A, r.v + k0 * dv, T(1), r.o + q0 * dv);
    }
  }
}

// dA = (dO Vᵀ) ⊙ M, dFQ = dA FK, dFK = dAᵀ FQ, dV = Aᵀ dO, tile by tile; returns dlog γ, which is
// Σ_{j<=i} (i−j) A_ij (dO Vᵀ)_ij (the only powers used are the γ^(i−j) of M).
template <typename T>
double parallel_backward_row(const BackwardRow<T>& r, const T* powers, ParallelScratch<T>& s) {
  const int64_t n = r.n, m = r.m, dv = r.dv_size;
  std::fill(r.dfq, r.dfq + n * m, T(0));
  std::fill(r.dfk, r.dfk + n * m, T(0));
  std::fill(r.dv, r.dv + n * dv, T(0));
  double dlog_gamma = 0.0;
  for (int64_t q0 = 0; q0 < n; q0 += kTile) {
    const int64_t nq = std::min(kTile, n - q0);
    for (int64_t k0 = 0; k0 <= q0; k0 += kTile) {
      const int64_t nk = std::min(kTile, n - k0);
      if (tile_vanishes(q0, k0, nk, powers)) continue;
      T* A = s.scores.data();
      T* dA = s.grad_scores.data();
      serial_gemm<T>(false, true, nq, nk, m, T(1), r.fq + q0 * m, r.fk + k0 * m, T(0), A);
      serial_gemm<T>(false, true, nq, nk, dv, T(1), r.dout + q0 * dv, r.v + k0 * dv, T(0), dA);
      dlog_gamma += apply_decay_mask(A, dA, nq, nk, q0 - k0, powers);
      serial_gemm<T>(false, false, nq, m, nk, T(1), dA, r.fk + k0 * m, T(1), r.dfq + q0 * m);
      serial_gemm<T>(true, false, nk, m, nq, T(1), dA, r.fq + q0 * m, T(1), r.dfk + k0 * m);
      serial_gemm<T>(true, false, nk, dv, nq, T(1), A, r.dout + q0 * dv, T(1), r.dv + k0 * dv);
    }
  }
  return dlog_gamma;
}

// ---------------------------------------------------------------------------------------------
// Chunkwise form (section 4). For chunk t of length L (the last may be shorter than `chunk`),
// local positions i, j in [0, L) and S_{t−1} the state after the previous chunk (S_{−1} = 0):
//
//   O_t = (FQ_t ⊙ γ^(i+1)) S_{t−1} + ((FQ_t FK_tᵀ) ⊙ M_local) V_t
//   S_t = γ^L S_{t−1} + (FK_t ⊙ γ^(L−1−j))ᵀ V_t
//
// where "X ⊙ γ^(f(i))" scales row i of X. The exponents i − j, i + 1, L − 1 − j and L all lie in
// [0, chunk], so one table γ^0 .. γ^chunk per head serves every chunk. Per token and head this is
// m dv (inter) + L (m + dv) (intra) + m dv (state) multiply-adds: 4d(d + c) FLOPs at m = dv = d.

template <typename T>
struct ChunkScratch {
  ChunkScratch(int64_t chunk, int64_t m, int64_t dv)
      : scaled(static_cast<size_t>(chunk * m)),
        rows(static_cast<size_t>(chunk * m)),
        scores(static_cast<size_t>(chunk * chunk)),
        grad_scores(static_cast<size_t>(chunk * chunk)),
        state(static_cast<size_t>(m * dv)) {}
  std::vector<T> scaled;        // [L, m]: FQ_t or FK_t with decayed rows
  std::vector<T> rows;          // [L, m]: dO_t S_{t−1}ᵀ or V_t dS_tᵀ
  std::vector<T> scores;        // [L, L]: A of the chunk
  std::vector<T> grad_scores;   // [L, L]: dA of the chunk
  std::vector<T> state;         // [m, dv]: S (forward) or dS (backward)
  std::vector<T> saved_states;  // [chunks, m, dv]: S_{t−1} of every chunk (backward)
};

// S ← γ^L S + (FK_t ⊙ γ^(L−1−j))ᵀ V_t: the state after L more positions. `scaled` is [L, m].
template <typename T>
void advance_state(T* state, const T* fk, const T* v, int64_t L, int64_t m, int64_t dv,
                   const T* powers, T* scaled) {
  scale_rows(scaled, fk, L, m, [&](int64_t j) { return powers[L - 1 - j]; });
  serial_gemm<T>(true, false, m, dv, L, T(1), scaled, v, powers[L], state);
}

template <typename T>
void chunkwise_forward_row(const ForwardRow<T>& r, const T* powers, int64_t chunk,
                           ChunkScratch<T>& s) {
  const int64_t n = r.n, m = r.m, dv = r.dv;
  T* S = s.state.data();
  std::fill(S, S + m * dv, T(0));
  for (int64_t t0 = 0; t0 < n; t0 += chunk) {
    const int64_t L = std::min(chunk, n - t0);
    const T* q = r.fq + t0 * m;
    const T* k = r.fk + t0 * m;
    const T* v = r.v + t0 * dv;
    T* out = r.o + t0 * dv;
    // Inter-chunk: (FQ_t ⊙ γ^(i+1)) S_{t−1}.
    scale_rows(s.scaled.data(), q, L, m, [&](int64_t i) { return powers[i + 1]; });
    serial_gemm<T>(false, false, L, dv, m, T(1), s.scaled.data(), S, T(0), out);
    // Intra-chunk: ((FQ_t FK_tᵀ) ⊙ M_local) V_t.
    serial_gemm<T>(false, true, L, L, m, T(1), q, k, T(0), s.scores.data());
    apply_decay_mask<T>(s.scores.data(), nullptr, L, L, 0, powers);
    serial_gemm<T>(false, false, L, dv, L, T(1), s.scores.data(), v, T(1), out);
    advance_state(S, k, v, L, m, dv, powers, s.scaled.data());
  }
}

// Reverse mode through the recursion above. With dS_t the adjoint of S_t (0 after the last
// chunk), G = dO_t V_tᵀ and dA = G ⊙ M_local:
//   dFQ_t    = dA FK_t + (dO_t S_{t−1}ᵀ) ⊙ γ^(i+1)
//   dFK_t    = dAᵀ FQ_t + (V_t dS_tᵀ) ⊙ γ^(L−1−j)
//   dV_t     = Aᵀ dO_t + (FK_t ⊙ γ^(L−1−j)) dS_t
//   dS_{t−1} = γ^L dS_t + (FQ_t ⊙ γ^(i+1))ᵀ dO_t
// and each power γ^k contributes k γ^k times its adjoint to dlog γ:
//   Σ_{j<=i} (i−j) A_ij G_ij                         (γ^(i−j), intra-chunk)
//   Σ_i (i+1) γ^(i+1) ⟨fq_i, (dO_t S_{t−1}ᵀ)_i⟩       (γ^(i+1), inter-chunk)
//   Σ_j (L−1−j) γ^(L−1−j) ⟨fk_j, (V_t dS_tᵀ)_j⟩       (γ^(L−1−j), new state entries)
//   L γ^L ⟨dS_t, S_{t−1}⟩                              (γ^L, decay of the carried state)
// A forward sweep recomputes the states S_{t−1} and keeps them, one [m, dv] matrix per chunk.
template <typename T>
double chunkwise_backward_row(const BackwardRow<T>& r, const T* powers, int64_t chunk,
                              ChunkScratch<T>& s) {
  const int64_t n = r.n, m = r.m, dv = r.dv_size;
  const int64_t chunks = ceil_div(n, chunk);
  const int64_t state_size = m * dv;
  s.saved_states.resize(static_cast<size_t>(chunks * state_size));
  T* states = s.saved_states.data();
  if (chunks > 0) std::fill(states, states + state_size, T(0));
  for (int64_t t = 0; t + 1 < chunks; ++t) {  // every chunk but the last is full
    T* next = states + (t + 1) * state_size;
    std::copy(states + t * state_size, next, next);
    advance_state(next, r.fk + t * chunk * m, r.v + t * chunk * dv, chunk, m, dv, powers,
                  s.scaled.data());
  }

  T* dS = s.state.data();
  std::fill(dS, dS + state_size, T(0));
  T* A = s.scores.data();
  T* dA = s.grad_scores.data();
  T* rows = s.rows.data();
  double dlog_gamma = 0.0;
  for (int64_t t = chunks - 1; t >= 0; --t) {
    const int64_t t0 = t * chunk;
    const int64_t L = std::min(chunk, n - t0);
    const T* q = r.fq + t0 * m;
    const T* k = r.fk + t0 * m;
    const T* v = r.v + t0 * dv;
    const T* dO = r.dout + t0 * dv;
    const T* S_prev = states + t * state_size;
    T* dq = r.dfq + t0 * m;
    T* dk = r.dfk + t0 * m;
    T* dvt = r.dv + t0 * dv;

    // Intra-chunk scores and their gradient.
    serial_gemm<T>(false, true, L, L, m, T(1), q, k, T(0), A);
    serial_gemm<T>(false, true, L, L, dv, T(1), dO, v, T(0), dA);
    dlog_gamma += apply_decay_mask(A, dA, L, L, 0, powers);

    // dFQ_t.
    serial_gemm<T>(false, false, L, m, L, T(1), dA, k, T(0), dq);
    serial_gemm<T>(false, true, L, m, dv, T(1), dO, S_prev, T(0), rows);
    for (int64_t i = 0; i < L; ++i) {
      const T f = powers[i + 1];
      dlog_gamma += static_cast<double>(i + 1) * static_cast<double>(f) *
                    dot(q + i * m, rows + i * m, m);
      for (int64_t a = 0; a < m; ++a) dq[i * m + a] += f * rows[i * m + a];
    }

    // dFK_t.
    serial_gemm<T>(true, false, L, m, L, T(1), dA, q, T(0), dk);
    serial_gemm<T>(false, true, L, m, dv, T(1), v, dS, T(0), rows);
    for (int64_t j = 0; j < L; ++j) {
      const int64_t e = L - 1 - j;
      const T f = powers[e];
      dlog_gamma +=
          static_cast<double>(e) * static_cast<double>(f) * dot(k + j * m, rows + j * m, m);
      for (int64_t a = 0; a < m; ++a) dk[j * m + a] += f * rows[j * m + a];
    }

    // dV_t.
    serial_gemm<T>(true, false, L, dv, L, T(1), A, dO, T(0), dvt);
    scale_rows(s.scaled.data(), k, L, m, [&](int64_t j) { return powers[L - 1 - j]; });
    serial_gemm<T>(false, false, L, dv, m, T(1), s.scaled.data(), dS, T(1), dvt);

    // The decay of the carried state, then dS_{t−1}.
    dlog_gamma +=
        static_cast<double>(L) * static_cast<double>(powers[L]) * dot(dS, S_prev, state_size);
    scale_rows(s.scaled.data(), q, L, m, [&](int64_t i) { return powers[i + 1]; });
    serial_gemm<T>(true, false, m, dv, L, T(1), s.scaled.data(), dO, powers[L], dS);
  }
  return dlog_gamma;
}

// ---------------------------------------------------------------------------------------------
// Recurrent form (section 4): S_i = γ S_{i−1} + fk_iᵀ v_i, o_i = fq_i S_i, one [m, dv] state.

// S ← γ S + xᵀ y (x: [m], y: [dv]).
template <typename T>
void recurrent_update(T* S, const T* x, const T* y, T gamma, int64_t m, int64_t dv) {
  for (int64_t a = 0; a < m; ++a)
    for (int64_t e = 0; e < dv; ++e) S[a * dv + e] = gamma * S[a * dv + e] + x[a] * y[e];
}

// out = x S (x: [m], S: [m, dv], out: [dv]).
template <typename T>
void row_times_state(T* out, const T* x, const T* S, int64_t m, int64_t dv) {
  std::fill(out, out + dv, T(0));
  for (int64_t a = 0; a < m; ++a)
    for (int64_t e = 0; e < dv; ++e) out[e] += x[a] * S[a * dv + e];
}

// out = S yᵀ (S: [m, dv], y: [dv], out: [m]).
template <typename T>
void state_times_column(T* out, const T* S, const T* y, int64_t m, int64_t dv) {
  for (int64_t a = 0; a < m; ++a) {
    T sum = 0;
    for (int64_t e = 0; e < dv; ++e) sum += S[a * dv + e] * y[e];
    out[a] = sum;
  }
}

template <typename T>
struct RecurrentScratch {
  RecurrentScratch(int64_t m, int64_t dv)
      : state(static_cast<size_t>(m * dv)), slope(state.size()), column(static_cast<size_t>(m)) {}
  std::vector<T> state;   // S (forward sweep) or dS (reverse sweep)
  std::vector<T> slope;   // R = ∂S/∂log γ
  std::vector<T> column;  // [m]
};

template <typename T>
void recurrent_forward_row(const ForwardRow<T>& r, T gamma, RecurrentScratch<T>& s) {
  T* S = s.state.data();
  std::fill(S, S + r.m * r.dv, T(0));
  for (int64_t i = 0; i < r.n; ++i) {
    recurrent_update(S, r.fk + i * r.m, r.v + i * r.dv, gamma, r.m, r.dv);
    row_times_state(r.o + i * r.dv, r.fq + i * r.m, S, r.m, r.dv);
  }
}

// Two sweeps, each with O(m dv) memory:
// - forward: dfq_i = S_i do_iᵀ, and dlog γ. S_i = Σ_{j<=i} γ^(i−j) fk_jᵀ v_j has the slope
//   R_i = ∂S_i/∂log γ = Σ_{j<=i} (i−j) γ^(i−j) fk_jᵀ v_j, which obeys R_i = γ (R_{i−1} + S_{i−1}),
//   so dlog γ = Σ_i fq_i R_i do_iᵀ accumulates alongside S. This is the reverse-mode sum
//   Σ_i γ ⟨dS_i, S_{i−1}⟩ reordered so that no state has to be stored or recomputed.
// - reverse: dS_i = γ dS_{i+1} + fq_iᵀ do_i, dfk_i = dS_i v_iᵀ, dv_i = fk_i dS_i.
template <typename T>
double recurrent_backward_row(const BackwardRow<T>& r, T gamma, RecurrentScratch<T>& s) {
  const int64_t n = r.n, m = r.m, dv = r.dv_size;
  T* S = s.state.data();
  T* R = s.slope.data();
  std::fill(S, S + m * dv, T(0));
  std::fill(R, R + m * dv, T(0));
  double dlog_gamma = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const T* dO = r.dout + i * dv;
    for (int64_t a = 0; a < m * dv; ++a) R[a] = gamma * (R[a] + S[a]);
    recurrent_update(S, r.fk + i * m, r.v + i * dv, gamma, m, dv);
    state_times_column(r.dfq + i * m, S, dO, m, dv);
    state_times_column(s.column.data(), R, dO, m, dv);
    dlog_gamma += dot(r.fq + i * m, s.column.data(), m);
  }
  T* dS = S;  // the forward state is no longer needed
  std::fill(dS, dS + m * dv, T(0));
  for (int64_t i = n - 1; i >= 0; --i) {
    recurrent_update(dS, r.fq + i * m, r.dout + i * dv, gamma, m, dv);
    state_times_column(r.dfk + i * m, dS, r.v + i * dv, m, dv);
    row_times_state(r.dv + i * dv, r.fk + i * m, dS, m, dv);
  }
  return dlog_gamma;
}

template <typename T>
T gamma_of(const T* log_gamma, int64_t h) {
  return static_cast<T>(std::exp(static_cast<double>(log_gamma[h])));
}

void check_shapes(const char* what, int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv) {
  if (BH < 0 || H < 1 || n < 0 || m < 1 || dv < 1)
    fail("{}: invalid shape BH = {}, H = {}, n = {}, m = {}, dv = {}", what, BH, H, n, m, dv);
}

void check_chunk(const char* what, int64_t chunk) {
  if (chunk < 1) fail("{}: chunk must be at least 1, got {}", what, chunk);
}

}  // namespace

template <typename T>
void decay_attention_forward(T* o, const T* fq, const T* fk, const T* v, const T* log_gamma,
                             int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv,
                             DecayForm form, int64_t chunk) {
  check_shapes("decay_attention_forward", BH, H, n, m, dv);
  if (form == DecayForm::Chunkwise) check_chunk("decay_attention_forward", chunk);
  const ForwardRow<T> all{o, fq, fk, v, n, m, dv};
  const bool parallel = BH > 1 && BH * n * m * dv > kParallelWork;
  switch (form) {
    case DecayForm::Parallel: {
      const int64_t count = std::max<int64_t>(n, 1);
      const std::vector<T> powers = decay_powers(log_gamma, H, count);
#pragma omp parallel if (parallel)
      {
        ParallelScratch<T> s;
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < BH; ++bh)
          parallel_forward_row(all.row(bh), powers.data() + (bh % H) * count, s);
      }
      break;
    }
    case DecayForm::Chunkwise: {
      const std::vector<T> powers = decay_powers(log_gamma, H, chunk + 1);
#pragma omp parallel if (parallel)
      {
        ChunkScratch<T> s(chunk, m, dv);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < BH; ++bh)
          chunkwise_forward_row(all.row(bh), powers.data() + (bh % H) * (chunk + 1), chunk, s);
      }
      break;
    }
    case DecayForm::Recurrent: {
#pragma omp parallel if (parallel)
      {
        RecurrentScratch<T> s(m, dv);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < BH; ++bh)
          recurrent_forward_row(all.row(bh), gamma_of(log_gamma, bh % H), s);
      }
      break;
    }
  }
}

template <typename T>
void decay_attention_backward(T* dfq, T* dfk, T* dv, T* dlog_gamma, const T* dout, const T* fq,
                              const T* fk, const T* v, const T* log_gamma, int64_t BH, int64_t H,
                              int64_t n, int64_t m, int64_t dv_size, DecayForm form,
                              int64_t chunk) {
  check_shapes("decay_attention_backward", BH, H, n, m, dv_size);
  if (form == DecayForm::Chunkwise) check_chunk("decay_attention_backward", chunk);
  const BackwardRow<T> all{dfq, dfk, dv, dout, fq, fk, v, n, m, dv_size};
  const bool parallel = BH > 1 && BH * n * m * dv_size > kParallelWork;
  std::vector<double> row_dlog_gamma(static_cast<size_t>(BH), 0.0);
  double* row_dlog = row_dlog_gamma.data();
  switch (form) {
    case DecayForm::Parallel: {
      const int64_t count = std::max<int64_t>(n, 1);
      const std::vector<T> powers = decay_powers(log_gamma, H, count);
#pragma omp parallel if (parallel)
      {
        ParallelScratch<T> s;
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < BH; ++bh)
          row_dlog[bh] = parallel_backward_row(all.row(bh), powers.data() + (bh % H) * count, s);
      }
      break;
    }
    case DecayForm::Chunkwise: {
      const std::vector<T> powers = decay_powers(log_gamma, H, chunk + 1);
#pragma omp parallel if (parallel)
      {
        ChunkScratch<T> s(chunk, m, dv_size);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < BH; ++bh)
          row_dlog[bh] = chunkwise_backward_row(all.row(bh),
                                                powers.data() + (bh % H) * (chunk + 1), chunk, s);
      }
      break;
    }
    case DecayForm::Recurrent: {
#pragma omp parallel if (parallel)
      {
        RecurrentScratch<T> s(m, dv_size);
#pragma omp for schedule(static)
        for (int64_t bh = 0; bh < BH; ++bh)
          row_dlog[bh] = recurrent_backward_row(all.row(bh), gamma_of(log_gamma, bh % H), s);
      }
      break;
    }
  }
  if (dlog_gamma != nullptr) add_dlog_gamma(dlog_gamma, row_dlog_gamma, H);
}

template <typename T>
void decay_attention_step(T* o, T* state, const T* fq, const T* fk, const T* v,
                          const T* log_gamma, int64_t BH, int64_t H, int64_t m, int64_t dv) {
  check_shapes("decay_attention_step", BH, H, 1, m, dv);
#pragma omp parallel for schedule(static) if (BH > 1 && BH * m * dv > kParallelWork)
  for (int64_t bh = 0; bh < BH; ++bh) {
    T* S = state + bh * m * dv;
    recurrent_update(S, fk + bh * m, v + bh * dv, gamma_of(log_gamma, bh % H), m, dv);
    row_times_state(o + bh * dv, fq + bh * m, S, m, dv);
  }
}

template <typename T>
void decay_attention_prefill_state(T* state, const T* fk, const T* v, const T* log_gamma,
                                   int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv,
                                   int64_t chunk) {
  check_shapes("decay_attention_prefill_state", BH, H, n, m, dv);
  check_chunk("decay_attention_prefill_state", chunk);
  const std::vector<T> powers = decay_powers(log_gamma, H, chunk + 1);
#pragma omp parallel if (BH > 1 && BH * n * m * dv > kParallelWork)
  {
    std::vector<T> scaled(static_cast<size_t>(chunk * m));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      T* S = state + bh * m * dv;
      std::fill(S, S + m * dv, T(0));
      for (int64_t t0 = 0; t0 < n; t0 += chunk)
        advance_state(S, fk + (bh * n + t0) * m, v + (bh * n + t0) * dv, std::min(chunk, n - t0),
                      m, dv, powers.data() + (bh % H) * (chunk + 1), scaled.data());
    }
  }
}

#define DJ_INSTANTIATE(T)                                                                        \
  template void decay_attention_forward<T>(T*, const T*, const T*, const T*, const T*, int64_t,  \
                                           int64_t, int64_t, int64_t, int64_t, DecayForm,        \
                                           int64_t);                                             \
  template void decay_attention_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*,        \
                                            const T*, const T*, int64_t, int64_t, int64_t,       \
                                            int64_t, int64_t, DecayForm, int64_t);               \
  template void decay_attention_step<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, \
                                        int64_t, int64_t, int64_t);                              \
  template void decay_attention_prefill_state<T>(T*, const T*, const T*, const T*, int64_t,      \
                                                 int64_t, int64_t, int64_t, int64_t, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
