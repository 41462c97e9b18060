#include "kernels/cpu/decode.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/gemm.h"

namespace dj::cpu {

template <typename T>
void cached_attention_step(T* o, const T* q, const T* k_cache, const T* v_cache, int64_t BH, int64_t len,
                           int64_t capacity, int64_t d, double scale) {
  if (BH < 0 || d < 1 || len < 1 || len > capacity)
    fail("cached attention: invalid shape (BH {}, len {}, capacity {}, d {})", BH, len, capacity, d);
  // Per row: scores = scale K q and o = Vᵀ p / Σp, two matrix-vector products over the cache (one
  // thread each, so a row's result does not depend on the thread count); max and sum in double.
#pragma omp parallel
  {
    std::vector<T> p(static_cast<size_t>(len));
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) {
      const T* K = k_cache + bh * capacity * d;
      const T* V = v_cache + bh * capacity * d;
      gemm<T>(false, true, 1, len, d, static_cast<T>(scale), q + bh * d, K, T(0), p.data());
      double max = -std::numeric_limits<double>::infinity();
      for (const T s : p) max = std::max(max, static_cast<double>(s));
      double sum = 0.0;
      for (T& s : p) {
        const double e = std::exp(static_cast<double>(s) - max);
        sum += e;
        s = static_cast<T>(e);
      }
      gemm<T>(false, false, 1, d, len, static_cast<T>(1.0 / sum), p.data(), V, T(0), o + bh * d);
    }
  }
}

template <typename T>
void copy_rows(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows, int64_t width) {
  if (width <= 0) return;
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + r * dst_stride, src + r * src_stride, static_cast<size_t>(width) * sizeof(T));
}

template void cached_attention_step<float>(float*, const float*, const float*, const float*, int64_t, int64_t, int64_t,
                                           int64_t, double);
template void cached_attention_step<double>(double*, const double*, const double*, const double*, int64_t, int64_t,
                                            int64_t, int64_t, double);
template void copy_rows<float>(float*, int64_t, const float*, int64_t, int64_t, int64_t);
template void copy_rows<double>(double*, int64_t, const double*, int64_t, int64_t, int64_t);
template void copy_rows<int32_t>(int32_t*, int64_t, const int32_t*, int64_t, int64_t, int64_t);

}  // namespace dj::cpu
