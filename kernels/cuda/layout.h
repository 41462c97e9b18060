// Layout changes and residual arithmetic of the GPT-NeoX layer on the device: the fused qkv rows
// [B, S, H, 3, d] to three [B, H, S, d] tensors and back, heads [B, H, S, d] to merged channels
// [B, S, H·d] and back, and elementwise sums. T is float or bf16; sums are formed in fp32 and
// rounded once. Each is one memory-bound kernel (a read and a write of every value).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dj::cuda {

template <typename T>
void split_qkv(T* q, T* k, T* v, const T* qkv, int64_t B, int64_t S, int64_t H, int64_t d, cudaStream_t stream);
template <typename T>
void join_qkv(T* qkv, const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H, int64_t d,
              cudaStream_t stream);
template <typename T>
void merge_heads(T* merged, const T* heads, int64_t B, int64_t S, int64_t H, int64_t d, cudaStream_t stream);
template <typename T>
void split_heads(T* heads, const T* merged, int64_t B, int64_t S, int64_t H, int64_t d, cudaStream_t stream);
// out = a + b (out may alias a or b).
template <typename T>
void add(T* out, const T* a, const T* b, int64_t n, cudaStream_t stream);
// out = a + b + c (the parallel residual: x + mlp + attention, summed as the CPU does: x + (b + c)).
template <typename T>
void add3(T* out, const T* x, const T* b, const T* c, int64_t n, cudaStream_t stream);

}  // namespace dj::cuda
