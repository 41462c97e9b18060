// The feature maps of the normalised linear-attention baselines (docs/method.md, section 8) and the
// normalisation they share, on the CPU. The attention itself is DiJiang's decayed attention
// (kernels/cpu/dijiang.h) with γ = 1 and a column of ones appended to V, so that one pass gives the
// numerator φ(q_i)·Σ_j φ(k_j) v_jᵀ and, in the last column, the denominator φ(q_i)·Σ_j φ(k_j).
// T is float or double; layouts are row-major, x [BH, n, d] and features [BH, n, m]. Results are
// deterministic and bit-identical for any thread count.
#pragma once
#include <cstdint>

namespace dj::cpu {

// performer: FAVOR+ positive random features, φ(x) = exp(ω_j·x' − |x'|²/2) / √m with
//   x' = x / d^(1/4) and ω_j the columns of P [d, m] (m = d). Queries drop the factor
//   exp(−|x'|²/2) and divide by exp(max_j ω_j·x') instead: a per-row constant, which the
//   normalisation cancels exactly, so that no query feature exceeds 1/√m.
// cosformer: φ(x_i) = [relu(x_i) cos θ_i, relu(x_i) sin θ_i] (m = 2d), θ_i = (π/2) · p_i / M for
//   the absolute position p_i of row i and the horizon M (the model's max_position_embeddings):
//   φ(q_i)·φ(k_j) = cos(θ_i − θ_j) ⟨relu q_i, relu k_j⟩.
// elu: φ(x) = elu(x) + 1 (m = d).
enum class LinearFeatureMap { Performer, CosFormer, Elu };

// m, the number of features for head size d.
int64_t linear_feature_count(LinearFeatureMap map, int64_t d);

// f = φ(x) for BH sequences of n rows; row i of each sequence is at position position0 + i
// (cosformer; needs 0 <= position < horizon). P: [d, m] for performer, unused otherwise (may be
// null). query selects the performer's query form.
template <typename T>
void linear_feature_forward(T* f, const T* x, const T* P, LinearFeatureMap map, bool query, int64_t BH, int64_t n,
                            int64_t d, int64_t position0, int64_t horizon);
// dx from df (overwrites dx), given x and f = φ(x). The performer's query shift is a constant of the
// row, as the normalisation makes it: its gradient is left out.
template <typename T>
void linear_feature_backward(T* dx, const T* df, const T* f, const T* x, const T* P, LinearFeatureMap map, bool query,
                             int64_t BH, int64_t n, int64_t d, int64_t position0, int64_t horizon);

// vx = [v, 1]: v [rows, dv] -> vx [rows, dv + 1].
template <typename T>
void append_ones(T* vx, const T* v, int64_t rows, int64_t dv);
// v = vx without its last column (the inverse of append_ones' layout).
template <typename T>
void drop_last_column(T* v, const T* vx, int64_t rows, int64_t dv);
// o = ox[:, :dv] / ox[:, dv], and 0 where the denominator ox[:, dv] is not positive (a row whose
// features meet no key's: cosformer's relu can zero them all).
template <typename T>
void normalize_rows_forward(T* o, const T* ox, int64_t rows, int64_t dv);
// dox = [dout / den, −⟨dout, o⟩ / den] per row (zero where den is not positive).
template <typename T>
void normalize_rows_backward(T* dox, const T* dout, const T* o, const T* ox, int64_t rows, int64_t dv);

}  // namespace dj::cpu
