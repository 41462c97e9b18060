// Causal softmax attention, tiled with an online softmax so the T x T matrix never exists:
// memory is O(T * d) plus one tile per thread, whatever the sequence length.
#pragma once
#include <cstdint>

namespace dj::cpu {

// q, k, v, o: [BH, T, d] row-major. lse [BH, T] (log-sum-exp of each scaled score row) is
// saved for the backward. o_i = sum_{j<=i} softmax_j(scale * q_i . k_j) v_j.
template <typename T>
void causal_attention_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t BH,
                              int64_t T_len, int64_t d, T scale);

// Overwrites dq, dk, dv. Recomputes the probabilities tile by tile from q, k and lse.
// Both directions give bit-identical results for any OpenMP thread count.
template <typename T>
void causal_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                               const T* v, const T* o, const T* lse, int64_t BH, int64_t T_len,
                               int64_t d, T scale);

}  // namespace dj::cpu
