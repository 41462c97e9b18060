// Layout changes and residual sums of the GPT-NeoX layer on the CPU, the twins of
// kernels/cuda/layout.h: the fused qkv rows [B, S, H, 3, d] to three [B, H, S, d] tensors and
// back, heads [B, H, S, d] to merged channels [B, S, H·d] and back, and elementwise sums.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstring>

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

// Copies and zero fills of activation-sized buffers, spread over the thread team when large (a
// serial one leaves the other threads waiting). U is any trivially copyable type.
inline constexpr int64_t kParallelCopyBytes = int64_t{1} << 18;
inline constexpr int64_t kCopyChunkBytes = int64_t{1} << 16;

// dst[0..n) = src[0..n); the ranges may overlap (then it is one memmove).
template <typename U>
void copy(U* dst, const U* src, int64_t n) {
  if (n <= 0 || dst == src) return;
  const int64_t bytes = n * static_cast<int64_t>(sizeof(U));
  if (bytes < kParallelCopyBytes || (dst < src + n && src < dst + n)) {
    std::memmove(dst, src, static_cast<size_t>(bytes));
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, kCopyChunkBytes / static_cast<int64_t>(sizeof(U)));
#pragma omp parallel for schedule(static)
  for (int64_t begin = 0; begin < n; begin += chunk)
    std::memcpy(dst + begin, src + begin, static_cast<size_t>(std::min(chunk, n - begin)) * sizeof(U));
}

// dst[0..n) = U(0).
template <typename U>
void fill_zero(U* dst, int64_t n) {
  if (n <= 0) return;
  const int64_t chunk = std::max<int64_t>(1, kCopyChunkBytes / static_cast<int64_t>(sizeof(U)));
#pragma omp parallel for schedule(static) if (n * static_cast<int64_t>(sizeof(U)) >= kParallelCopyBytes)
  for (int64_t begin = 0; begin < n; begin += chunk) std::fill(dst + begin, dst + std::min(n, begin + chunk), U(0));
}

}  // namespace dj::cpu
