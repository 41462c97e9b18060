// Incremental decoding on the GPU, the twins of kernels/cpu/decode.h: the softmax teacher's
// attention of one new token per row over a key/value cache, and the strided row copies that fill
// the cache. DiJiang decodes with decay_attention_step and decay_attention_prefill_state
// (dijiang_attention.h). T is float or bf16.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dj::cuda {

// The largest head size cached_attention_step supports.
inline constexpr int64_t kMaxCachedAttentionDim = 512;

// For each of BH rows: o = Σ_{j<len} softmax_j(scale q·k_j) v_j over the cache's positions
// 0..len-1. q, o: [BH, d]; k_cache, v_cache: [BH, capacity, d] (1 <= len <= capacity,
// d <= kMaxCachedAttentionDim). Scores, the online softmax and the sums in fp32, in a fixed order.
template <typename T>
void cached_attention_step(T* o, const T* q, const T* k_cache, const T* v_cache, int64_t BH, int64_t len,
                           int64_t capacity, int64_t d, double scale, cudaStream_t stream);

// rows rows of `width` values from src (row r at src + r src_stride) to dst (dst + r dst_stride).
template <typename T>
void copy_rows(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows, int64_t width,
               cudaStream_t stream);

}  // namespace dj::cuda
