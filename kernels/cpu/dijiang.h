// DiJiang attention on the CPU (docs/method.md, sections 2-4): the DCT-based
// feature map, the decayed causal linear attention in its three equivalent forms, GroupNorm and
// the swish gate. Each op has a forward and a backward; T is float or double. Layouts are
// row-major; "BH" rows are (batch, head) pairs and row bh belongs to head bh % H. The attention
// forms and GroupNorm reject invalid arguments (chunk < 1, groups not dividing channels) with
// dj::Error. Results are deterministic; those of the attention forms, GroupNorm and the feature
// weights are bit-identical for any thread count.
#pragma once
#include <cstdint>

namespace dj::cpu {

// P = C · diag(t) (d x d), C the orthonormal DCT-II matrix with rows as frequencies:
// C[k][j] = s_k cos(pi (2j + 1) k / (2d)), s_0 = sqrt(1/d), s_k = sqrt(2/d). Computed in double.
template <typename T>
void dct_projection(T* P, const double* t, int64_t d);

// s = softmax(x · P) over the d features of each of `rows` rows (x, s: [rows, d]).
template <typename T>
void feature_map_forward(T* s, const T* x, const T* P, int64_t rows, int64_t d);
// dx = (s ⊙ (ds − ⟨s, ds⟩)) · Pᵀ (overwrites dx). P is fixed: no gradient.
template <typename T>
void feature_map_backward(T* dx, const T* ds, const T* s, const T* P, int64_t rows, int64_t d);

// Optional learned feature weights (the paper's D): phi = w[h] ⊙ s, w: [H, d], s/phi: [BH, n, d].
template <typename T>
void feature_weights_forward(T* phi, const T* s, const T* w, int64_t BH, int64_t H, int64_t n, int64_t d);
// ds = w[h] ⊙ dphi (overwrites; ds may alias dphi), dw += Σ dphi ⊙ s.
template <typename T>
void feature_weights_backward(T* ds, T* dw, const T* dphi, const T* s, const T* w, int64_t BH, int64_t H,
                              int64_t n, int64_t d);

// The three forms of o_i = Σ_{j<=i} γ_h^(i−j) ⟨fq_i, fk_j⟩ v_j (no denominator), with
// γ_h = exp(log_gamma[h]) < 1. Only relative exponents (i − j >= 0, chunk offsets) are formed.
enum class DecayForm { Parallel, Chunkwise, Recurrent };

// fq, fk: [BH, n, m]; v, o: [BH, n, dv]; log_gamma: [H]. chunk: block size of the chunkwise
// form, >= 1 (any n, including n not a multiple of chunk); ignored by the other forms. Parallel
// is quadratic in n (the reference), Recurrent is sequential per row; Chunkwise is the training
// path (on the CPU at m = dv = 64, chunks 32 and 64 measured fastest, 128 ~1.4x slower).
template <typename T>
void decay_attention_forward(T* o, const T* fq, const T* fk, const T* v, const T* log_gamma, int64_t BH,
                             int64_t H, int64_t n, int64_t m, int64_t dv, DecayForm form, int64_t chunk);

// Overwrites dfq, dfk, dv; dlog_gamma [H] accumulates (+=) the gradient w.r.t. log γ. To skip it,
// pass a typed null pointer (static_cast<T*>(nullptr)): a bare nullptr defeats deduction of T.
template <typename T>
void decay_attention_backward(T* dfq, T* dfk, T* dv, T* dlog_gamma, const T* dout, const T* fq, const T* fk,
                              const T* v, const T* log_gamma, int64_t BH, int64_t H, int64_t n, int64_t m,
                              int64_t dv_size, DecayForm form, int64_t chunk);

// One decoding step for a batch of sequences: S = γ S + fkᵀ v, o = fq · S.
// state: [BH, m, dv] (updated in place); fq, fk: [BH, m]; v, o: [BH, dv].
template <typename T>
void decay_attention_step(T* o, T* state, const T* fq, const T* fk, const T* v, const T* log_gamma,
                          int64_t BH, int64_t H, int64_t m, int64_t dv);

// The state after a whole prefix (what a decoder continues from): S_n = Σ_j γ^(n−1−j) fk_jᵀ v_j,
// computed chunkwise (chunk >= 1). fk: [BH, n, m]; v: [BH, n, dv]; state: [BH, m, dv]
// (overwritten).
template <typename T>
void decay_attention_prefill_state(T* state, const T* fk, const T* v, const T* log_gamma, int64_t BH,
                                   int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk);

// GroupNorm per row over `groups` groups of channels/groups consecutive channels (biased
// variance), with per-channel affine w, b. mean, rstd: [rows, groups] saved for the backward.
// groups must divide channels. DiJiang's default is groups = d over channels = H d (section 2).
template <typename T>
void group_norm_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows,
                        int64_t channels, int64_t groups, double eps);
// dx overwritten; dw, db accumulate.
template <typename T>
void group_norm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean,
                         const T* rstd, int64_t rows, int64_t channels, int64_t groups);

// GroupNorm fused with the swish gate, the twin of kernels/cuda/dijiang_attention.h's:
// y = silu(g) ⊙ GroupNorm(x). mean, rstd [rows, groups] are saved for the backward, which
// recomputes GroupNorm(x) from x and them (so nothing of size rows x channels is kept).
template <typename T>
void group_norm_gate_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, const T* g, int64_t rows,
                             int64_t channels, int64_t groups, double eps);
// Overwrites dx and dg; dw and db accumulate.
template <typename T>
void group_norm_gate_backward(T* dx, T* dg, T* dw, T* db, const T* dy, const T* x, const T* g, const T* w,
                              const T* b, const T* mean, const T* rstd, int64_t rows, int64_t channels,
                              int64_t groups);

// Swish gate: y = silu(g) ⊙ x, silu(g) = g · sigmoid(g). Backward overwrites dg and dx.
template <typename T>
void silu_gate_forward(T* y, const T* g, const T* x, int64_t n);
template <typename T>
void silu_gate_backward(T* dg, T* dx, const T* dy, const T* g, const T* x, int64_t n);

}  // namespace dj::cpu
