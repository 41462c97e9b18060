// The chunkwise form of the decayed attention (docs/method.md, section 4), linear in n: the
// training path; and the state after a prefix (what a decoder continues from), computed chunkwise.
// See decay_attention_rows.h.
#include "kernels/cpu/decay_attention_rows.h"

namespace dj::cpu {

namespace decay {

namespace {

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


}  // namespace

template <typename T>
void chunkwise_forward(const ForwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, int64_t chunk,
                       bool threaded) {
  const std::vector<T> powers = decay_powers(log_gamma, H, chunk + 1);
#pragma omp parallel if (threaded)
  {
    ChunkScratch<T> s(chunk, all.m, all.dv);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh)
      chunkwise_forward_row(all.row(bh), powers.data() + (bh % H) * (chunk + 1), chunk, s);
  }
}

template <typename T>
void chunkwise_backward(const BackwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, int64_t chunk,
                        bool threaded, double* row_dlog) {
  const std::vector<T> powers = decay_powers(log_gamma, H, chunk + 1);
#pragma omp parallel if (threaded)
  {
    ChunkScratch<T> s(chunk, all.m, all.dv_size);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh)
      row_dlog[bh] = chunkwise_backward_row(all.row(bh), powers.data() + (bh % H) * (chunk + 1), chunk, s);
  }
}

template void chunkwise_forward<float>(const ForwardRow<float>&, const float*, int64_t, int64_t, int64_t, bool);
template void chunkwise_backward<float>(const BackwardRow<float>&, const float*, int64_t, int64_t, int64_t, bool, double*);
template void chunkwise_forward<double>(const ForwardRow<double>&, const double*, int64_t, int64_t, int64_t, bool);
template void chunkwise_backward<double>(const BackwardRow<double>&, const double*, int64_t, int64_t, int64_t, bool, double*);

}  // namespace decay

using namespace decay;

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

template void decay_attention_prefill_state<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                                   int64_t, int64_t, int64_t, int64_t);
template void decay_attention_prefill_state<double>(double*, const double*, const double*, const double*, int64_t,
                                                    int64_t, int64_t, int64_t, int64_t, int64_t);

}  // namespace dj::cpu
