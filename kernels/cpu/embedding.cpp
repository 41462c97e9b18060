#include "kernels/cpu/embedding.h"

#include <algorithm>

#include "kernels/core/error.h"

namespace dj::cpu {

namespace {

// Columns per task in the backward scatter-add.
constexpr int64_t kColumnChunk = 64;

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab,
                       int64_t channels) {
  // Validate everything before touching out, and outside the parallel region (an exception may
  // not leave an OpenMP region).
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab)
      fail("embedding: token id {} at position {} is outside the vocabulary [0, {})", ids[i], i,
           vocab);
#pragma omp parallel for schedule(static) if (n * channels > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    const T* src = table + static_cast<int64_t>(ids[i]) * channels;
    std::copy(src, src + channels, out + i * channels);
  }
}

template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t channels) {
  // Repeated ids make a row-parallel scatter race. Instead each task owns a block of columns and
  // adds the positions in order, so the sums are bit-identical for any thread count.
  const int64_t chunks = (channels + kColumnChunk - 1) / kColumnChunk;
#pragma omp parallel for schedule(static) if (n * channels > kParallelThreshold)
  for (int64_t chunk = 0; chunk < chunks; ++chunk) {
    const int64_t c0 = chunk * kColumnChunk;
    const int64_t c1 = std::min(channels, c0 + kColumnChunk);
    for (int64_t i = 0; i < n; ++i) {
      T* dst = dtable + static_cast<int64_t>(ids[i]) * channels;
      const T* src = dout + i * channels;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

#define DJ_INSTANTIATE(T)                                                                      \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t); \
  template void embedding_backward<T>(T*, const T*, const int32_t*, int64_t, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
