#include "kernels/cpu/gemm.h"

#include <cblas.h>

#include <algorithm>
#include <limits>
#include <type_traits>

#include "kernels/core/error.h"

namespace dj::cpu {

namespace {

// CBLAS takes int dimensions; a silent truncation would corrupt memory, so refuse instead.
int blas_int(int64_t value, const char* what) {
  if (value < 0 || value > std::numeric_limits<int>::max())
    fail("gemm: {} = {} is outside the range CBLAS accepts", what, value);
  return static_cast<int>(value);
}

// Columns per task in the bias-gradient reduction: wide enough to stream each row segment with
// full cache lines, narrow enough that a 512-wide layer still spreads over 8 tasks.
constexpr int64_t kColumnChunk = 64;

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          const T* B, T beta, T* C) {
  const int m = blas_int(M, "M");
  const int n = blas_int(N, "N");
  const int k = blas_int(K, "K");
  if (m == 0 || n == 0) return;
  // Leading dimensions of the stored (not transposed) operands; BLAS demands at least 1 even
  // when the matrix is empty (K == 0).
  const int lda = std::max(1, trans_a ? m : k);
  const int ldb = std::max(1, trans_b ? k : n);
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, n);
  else
    cblas_dgemm(CblasRowMajor, ta, tb, m, n, k, alpha, A, lda, B, ldb, beta, C, n);
}

template <typename T>
void linear_forward(T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in,
                    int64_t out) {
  if (b != nullptr) {
    // Seed every output row with the bias and let the product accumulate onto it (beta = 1).
#pragma omp parallel for schedule(static) if (rows * out > kParallelThreshold)
    for (int64_t r = 0; r < rows; ++r) std::copy(b, b + out, y + r * out);
  }
  gemm<T>(false, true, rows, out, in, T(1), x, W, b != nullptr ? T(1) : T(0), y);
}

template <typename T>
void linear_backward(T* dx, T* dW, T* db, const T* dy, const T* x, const T* W, int64_t rows,
                     int64_t in, int64_t out, bool accumulate_dx) {
  if (dx != nullptr)
    gemm<T>(false, false, rows, in, out, T(1), dy, W, accumulate_dx ? T(1) : T(0), dx);
  if (dW != nullptr) gemm<T>(true, false, out, in, rows, T(1), dy, x, T(1), dW);
  if (db != nullptr) {
    // Each task owns a fixed block of columns and sums its rows in order, in double: no races,
    // and the result does not depend on the thread count.
    const int64_t chunks = (out + kColumnChunk - 1) / kColumnChunk;
#pragma omp parallel for schedule(static) if (rows * out > kParallelThreshold)
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      const int64_t c0 = chunk * kColumnChunk;
      const int64_t c1 = std::min(out, c0 + kColumnChunk);
      double sums[kColumnChunk] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const T* row = dy + r * out;
        for (int64_t c = c0; c < c1; ++c) sums[c - c0] += static_cast<double>(row[c]);
      }
      for (int64_t c = c0; c < c1; ++c) db[c] = static_cast<T>(db[c] + sums[c - c0]);
    }
  }
}

#define DJ_INSTANTIATE(T)                                                                       \
  template void gemm<T>(bool, bool, int64_t, int64_t, int64_t, T, const T*, const T*, T, T*);   \
  template void linear_forward<T>(T*, const T*, const T*, const T*, int64_t, int64_t, int64_t); \
  template void linear_backward<T>(T*, T*, T*, const T*, const T*, const T*, int64_t, int64_t,  \
                                   int64_t, bool);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
