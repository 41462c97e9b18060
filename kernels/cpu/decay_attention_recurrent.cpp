// The recurrent form of the decayed attention (docs/method.md, section 4): one [m, dv] state per
// (batch, head) row, updated token by token; and the decoding step, the same update for one token.
// See decay_attention_rows.h.
#include "kernels/cpu/decay_attention_rows.h"

namespace dj::cpu {

namespace decay {

namespace {

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

}  // namespace

template <typename T>
void recurrent_forward(const ForwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded) {
#pragma omp parallel if (threaded)
  {
    RecurrentScratch<T> s(all.m, all.dv);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) recurrent_forward_row(all.row(bh), gamma_of(log_gamma, bh % H), s);
  }
}

template <typename T>
void recurrent_backward(const BackwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded,
                        double* row_dlog) {
#pragma omp parallel if (threaded)
  {
    RecurrentScratch<T> s(all.m, all.dv_size);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh)
      row_dlog[bh] = recurrent_backward_row(all.row(bh), gamma_of(log_gamma, bh % H), s);
  }
}

template void recurrent_forward<float>(const ForwardRow<float>&, const float*, int64_t, int64_t, bool);
template void recurrent_backward<float>(const BackwardRow<float>&, const float*, int64_t, int64_t, bool, double*);
template void recurrent_forward<double>(const ForwardRow<double>&, const double*, int64_t, int64_t, bool);
template void recurrent_backward<double>(const BackwardRow<double>&, const double*, int64_t, int64_t, bool, double*);

}  // namespace decay

using namespace decay;

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

template void decay_attention_step<float>(float*, float*, const float*, const float*, const float*, const float*,
                                          int64_t, int64_t, int64_t, int64_t);
template void decay_attention_step<double>(double*, double*, const double*, const double*, const double*,
                                           const double*, int64_t, int64_t, int64_t, int64_t);

}  // namespace dj::cpu
