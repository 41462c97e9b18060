#include "kernels/cpu/layout.h"

#include <algorithm>

namespace dj::cpu {

namespace {
// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;
}  // namespace

template <typename T>
void split_qkv(T* q, T* k, T* v, const T* qkv, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s) {
        const T* row = qkv + ((b * S + s) * H + h) * 3 * d;
        const int64_t o = ((b * H + h) * S + s) * d;
        std::copy(row, row + d, q + o);
        std::copy(row + d, row + 2 * d, k + o);
        std::copy(row + 2 * d, row + 3 * d, v + o);
      }
}

template <typename T>
void join_qkv(T* qkv, const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s) {
        T* row = qkv + ((b * S + s) * H + h) * 3 * d;
        const int64_t o = ((b * H + h) * S + s) * d;
        std::copy(q + o, q + o + d, row);
        std::copy(k + o, k + o + d, row + d);
        std::copy(v + o, v + o + d, row + 2 * d);
      }
}

template <typename T>
void merge_heads(T* merged, const T* heads, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h) {
        const T* src = heads + ((b * H + h) * S + s) * d;
        std::copy(src, src + d, merged + ((b * S + s) * H + h) * d);
      }
}

template <typename T>
void split_heads(T* heads, const T* merged, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h) {
        const T* src = merged + ((b * S + s) * H + h) * d;
        std::copy(src, src + d, heads + ((b * H + h) * S + s) * d);
      }
}

template <typename T>
void add(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

template <typename T>
void add3(T* out, const T* x, const T* b, const T* c, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) out[i] = x[i] + (b[i] + c[i]);
}

template <typename T>
void accumulate(T* out, const T* in, int64_t n) {
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) out[i] += in[i];
}

#define DJ_INSTANTIATE(T)                                                                          \
  template void split_qkv<T>(T*, T*, T*, const T*, int64_t, int64_t, int64_t, int64_t);           \
  template void join_qkv<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t); \
  template void merge_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t);                 \
  template void split_heads<T>(T*, const T*, int64_t, int64_t, int64_t, int64_t);                 \
  template void add<T>(T*, const T*, const T*, int64_t);                                          \
  template void add3<T>(T*, const T*, const T*, const T*, int64_t);                               \
  template void accumulate<T>(T*, const T*, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
