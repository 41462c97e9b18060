// Incremental decoding on the CPU (the twins of kernels/cuda/decode.h): the softmax teacher's
// attention of new tokens over a key/value cache, and the strided row copies that fill the cache.
// DiJiang decodes with decay_attention_step and decay_attention_prefill_state (dijiang.h).
#pragma once
#include <cstdint>

namespace dj::cpu {

// Causal softmax attention of one new token per row over a cache: for each of BH rows,
// o = Σ_{j<len} softmax_j(scale q·k_j) v_j, where the cache holds the row's keys and values at
// positions 0..len-1 (the new token's own at len-1). q, o: [BH, d]; k_cache, v_cache:
// [BH, capacity, d] (len <= capacity). The maximum and the sum of the exponentials in double; the
// result does not depend on the thread count.
template <typename T>
void cached_attention_step(T* o, const T* q, const T* k_cache, const T* v_cache, int64_t BH, int64_t len,
                           int64_t capacity, int64_t d, double scale);

// rows rows of `width` values from src (row r at src + r src_stride) to dst (dst + r dst_stride).
template <typename T>
void copy_rows(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows, int64_t width);

}  // namespace dj::cpu
