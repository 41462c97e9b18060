// Layout changes and residual sums of the GPT-NeoX layer on the CPU, the twins of
// kernels/cuda/layout.h: the fused qkv rows [B, S, H, 3, d] to three [B, H, S, d] tensors and
// back, heads [B, H, S, d] to merged channels [B, S, H·d] and back, and elementwise sums.
#pragma once
#include <cstdint>

namespace dj::cpu {

template <typename T>
void split_qkv(T* q, T* k, T* v, const T* qkv, int64_t B, int64_t S, int64_t H, int64_t d);
template <typename T>
void join_qkv(T* qkv, const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H, int64_t d);
template <typename T>
void merge_heads(T* merged, const T* heads, int64_t B, int64_t S, int64_t H, int64_t d);
template <typename T>
void split_heads(T* heads, const T* merged, int64_t B, int64_t S, int64_t H, int64_t d);
// out = a + b (out may alias a or b).
template <typename T>
void add(T* out, const T* a, const T* b, int64_t n);
// out = x + (b + c): the parallel residual x + mlp + attention, in the order the model sums it.
template <typename T>
void add3(T* out, const T* x, const T* b, const T* c, int64_t n);
// out += in.
template <typename T>
void accumulate(T* out, const T* in, int64_t n);

}  // namespace dj::cpu
