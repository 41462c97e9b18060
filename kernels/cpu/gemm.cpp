// Matrix products: OpenBLAS in every build of the project. DIJIANG_NO_BLAS selects a portable
// fallback instead (cache-blocked loops, OpenMP over rows) that exists only for the standalone
// device-check build (tests/gpu/CMakeLists.txt), whose GPU machine has no BLAS; there it serves as
// the CPU reference the CUDA kernels are compared with. The main build never defines it.
#include "kernels/cpu/gemm.h"

#ifndef DIJIANG_NO_BLAS
#include <cblas.h>
#include <omp.h>
#endif

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

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

#ifndef DIJIANG_NO_BLAS
// Every product is cut into blocks that the program's OpenMP team shares (see gemm), so OpenBLAS
// must run each block on the thread that calls it. Its OpenMP build (0.3.21) does not keep to
// that inside a parallel region while its own thread count is above one: the calls of the team's
// first thread started teams of their own, which then fought the other threads for the cores
// (products of 512 x 2048 x 512 in 6 blocks on 2 threads: 1.5x slower, single calls 3-6x slower
// than their neighbours). With its count at one, OpenBLAS runs every call single-threaded; a
// substituted pthread build then leaves its own pool idle too. Set once, before the first product;
// the OpenMP build's setter also sets the calling thread's OpenMP team size, which is put back.
void keep_blas_single_threaded() {
  static const bool once = [] {
    const int team = omp_get_max_threads();
    openblas_set_num_threads(1);
    omp_set_num_threads(team);
    return true;
  }();
  (void)once;
}

// The blocks a product is cut into (see gemm): at most 6 (an even share for 1, 2, 3 and 6
// threads), each at least 64 wide, with boundaries on multiples of 16.
constexpr int64_t kMaxGemmBlocks = 6;
constexpr int64_t kMinGemmBlock = 64;
constexpr int64_t kGemmAlign = 16;
#endif

#ifdef DIJIANG_NO_BLAS
// Fallback blocks: a kBlockK x kBlockN panel of op(B) (1 MiB in double) is packed row-major once
// and then streamed by every row of C, so the inner loop is a contiguous axpy the compiler
// vectorises. Each C element sums its products in increasing k, whatever the thread count.
constexpr int64_t kBlockK = 256;
constexpr int64_t kBlockN = 512;

template <typename T>
void gemm_fallback(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                   const T* B, T beta, T* C) {
  // BLAS semantics: beta == 0 overwrites C (NaN in C does not survive), alpha == 0 or K == 0
  // reads neither A nor B.
  const double work = static_cast<double>(M) * static_cast<double>(N) *
                      static_cast<double>(std::max<int64_t>(K, 1));
  const bool parallel = work > static_cast<double>(kParallelThreshold);
  if (beta != T(1)) {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t i = 0; i < M; ++i) {
      T* c = C + i * N;
      if (beta == T(0))
        std::fill(c, c + N, T(0));
      else
        for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
  }
  if (alpha == T(0) || K == 0) return;
  std::vector<T> panel(static_cast<size_t>(std::min(K, kBlockK) * std::min(N, kBlockN)));
  for (int64_t j0 = 0; j0 < N; j0 += kBlockN) {
    const int64_t nb = std::min(kBlockN, N - j0);
    for (int64_t k0 = 0; k0 < K; k0 += kBlockK) {
      const int64_t kb = std::min(kBlockK, K - k0);
      T* const packed = panel.data();
#pragma omp parallel if (parallel)
      {
        // panel[kk, jj] = op(B)[k0 + kk, j0 + jj]; B is [K,N], or [N,K] when transposed (then
        // read along its rows and written down the panel's columns).
        if (trans_b) {
#pragma omp for schedule(static)
          for (int64_t jj = 0; jj < nb; ++jj) {
            const T* column = B + (j0 + jj) * K + k0;
            for (int64_t kk = 0; kk < kb; ++kk) packed[kk * nb + jj] = column[kk];
          }
        } else {
#pragma omp for schedule(static)
          for (int64_t kk = 0; kk < kb; ++kk)
            std::copy(B + (k0 + kk) * N + j0, B + (k0 + kk) * N + j0 + nb, packed + kk * nb);
        }
        // C[i, j0:j0+nb] += alpha * op(A)[i, k0:k0+kb] * panel; A is [M,K], or [K,M] when
        // transposed. (The implicit barrier of the loop above orders packing before use.)
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M; ++i) {
          T* c = C + i * N + j0;
          for (int64_t kk = 0; kk < kb; ++kk) {
            const int64_t k = k0 + kk;
            const T a = alpha * (trans_a ? A[k * M + i] : A[i * K + k]);
            const T* b = packed + kk * nb;
            for (int64_t jj = 0; jj < nb; ++jj) c[jj] += a * b[jj];
          }
        }
      }
    }
  }
}
#endif

}  // namespace

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          const T* B, T beta, T* C) {
  const int m = blas_int(M, "M");
  const int n = blas_int(N, "N");
  const int k = blas_int(K, "K");
  if (m == 0 || n == 0) return;
#ifdef DIJIANG_NO_BLAS
  (void)k;
  gemm_fallback<T>(trans_a, trans_b, M, N, K, alpha, A, B, beta, C);
#else
  keep_blas_single_threaded();
  // Leading dimensions of the stored (not transposed) operands; BLAS demands at least 1 even
  // when the matrix is empty (K == 0).
  const int lda = std::max(1, trans_a ? m : k);
  const int ldb = std::max(1, trans_b ? k : n);
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans;
  const CBLAS_TRANSPOSE tb = trans_b ? CblasTrans : CblasNoTrans;
  // The same bits for any thread count. OpenBLAS cuts a product among its threads differently
  // for each thread count, and computes the cut edges with other micro-kernels, so a product on
  // 1, 2 and 3 threads differs in the last bits (every shape of the model did). Instead, C is cut
  // here along its larger dimension into blocks decided by the shape alone, each one
  // single-threaded OpenBLAS call (OpenBLAS's OpenMP build runs single-threaded inside an active
  // OpenMP region), and the blocks are shared among the threads.
  const bool split_rows = M >= N;
  const int64_t dim = split_rows ? M : N;
  const int64_t blocks = std::clamp<int64_t>(dim / kMinGemmBlock, 1, kMaxGemmBlocks);
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    // Boundaries on multiples of the micro-kernels' widest tile where the shape allows it.
    const int64_t lo = block == 0 ? 0 : dim * block / blocks / kGemmAlign * kGemmAlign;
    const int64_t hi = block == blocks - 1 ? dim : dim * (block + 1) / blocks / kGemmAlign * kGemmAlign;
    const int count = static_cast<int>(hi - lo);
    if (split_rows) {
      // Rows lo..hi of op(A) and C.
      const T* a = trans_a ? A + lo : A + lo * lda;
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, count, n, k, alpha, a, lda, B, ldb, beta, C + lo * N, n);
      else
        cblas_dgemm(CblasRowMajor, ta, tb, count, n, k, alpha, a, lda, B, ldb, beta, C + lo * N, n);
    } else {
      // Columns lo..hi of op(B) and C.
      const T* b = trans_b ? B + lo * ldb : B + lo;
      if constexpr (std::is_same_v<T, float>)
        cblas_sgemm(CblasRowMajor, ta, tb, m, count, k, alpha, A, lda, b, ldb, beta, C + lo, n);
      else
        cblas_dgemm(CblasRowMajor, ta, tb, m, count, k, alpha, A, lda, b, ldb, beta, C + lo, n);
    }
  }
#endif
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
