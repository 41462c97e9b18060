// The portable gemm that kernels/cpu/gemm.cpp compiles under DIJIANG_NO_BLAS (used only by the
// device-check build in tests/gpu, whose GPU machine has no BLAS), against OpenBLAS called
// directly: every transpose pair, sizes that cross the fallback's blocks, the BLAS special cases
// of alpha and beta, and results that do not depend on the thread count. This executable compiles
// gemm.cpp a second time with DIJIANG_NO_BLAS, so it links no other project library.
#include <cblas.h>
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "kernels/cpu/gemm.h"

namespace dj {
namespace {

template <typename T>
std::vector<T> random_values(std::mt19937_64& rng, int64_t count) {
  std::normal_distribution<double> normal;
  std::vector<T> values(static_cast<size_t>(count));
  for (auto& v : values) v = static_cast<T>(normal(rng));
  return values;
}

template <typename T>
void blas_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, T alpha, const T* A, const T* B,
               T beta, T* C) {
  const auto m = static_cast<int>(M), n = static_cast<int>(N), k = static_cast<int>(K);
  const int lda = std::max(1, ta ? m : k), ldb = std::max(1, tb ? k : n);
  const auto op_a = ta ? CblasTrans : CblasNoTrans, op_b = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, n);
  else
    cblas_dgemm(CblasRowMajor, op_a, op_b, m, n, k, alpha, A, lda, B, ldb, beta, C, n);
}

template <typename T>
double relative_error(const std::vector<T>& got, const std::vector<T>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(got[i]) - static_cast<double>(want[i]);
    diff += d * d;
    norm += static_cast<double>(want[i]) * static_cast<double>(want[i]);
  }
  return std::sqrt(diff / std::max(norm, std::numeric_limits<double>::min()));
}

template <typename T>
void compare_with_blas(double tolerance) {
  std::mt19937_64 rng(20240611);
  struct Shape {
    int64_t M, N, K;
  };
  // Blocks are 256 deep and 512 wide: cover one partial block, exact blocks and ragged edges.
  const Shape shapes[] = {{1, 1, 1}, {7, 13, 5}, {33, 512, 256}, {19, 1031, 263}, {65, 600, 777}};
  const T scalars[][2] = {{T(1), T(0)}, {T(0.7), T(-1.3)}, {T(-2), T(1)}};
  for (const auto& s : shapes)
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (const auto& ab : scalars) {
          const auto A = random_values<T>(rng, s.M * s.K);
          const auto B = random_values<T>(rng, s.K * s.N);
          const auto C = random_values<T>(rng, s.M * s.N);
          auto want = C, got = C;
          blas_gemm<T>(ta, tb, s.M, s.N, s.K, ab[0], A.data(), B.data(), ab[1], want.data());
          cpu::gemm<T>(ta, tb, s.M, s.N, s.K, ab[0], A.data(), B.data(), ab[1], got.data());
          EXPECT_LT(relative_error(got, want), tolerance)
              << "M=" << s.M << " N=" << s.N << " K=" << s.K << " ta=" << ta << " tb=" << tb
              << " alpha=" << ab[0] << " beta=" << ab[1];
        }
}

TEST(GemmNoBlas, DoubleMatchesOpenBlas) { compare_with_blas<double>(1e-13); }
TEST(GemmNoBlas, FloatMatchesOpenBlas) { compare_with_blas<float>(1e-5); }

TEST(GemmNoBlas, BetaZeroOverwritesAndAlphaZeroOrEmptyKScales) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  std::vector<double> A = {1, 2, 3, 4}, B = {5, 6, 7, 8};
  std::vector<double> C(4, nan);
  cpu::gemm<double>(false, false, 2, 2, 2, 1.0, A.data(), B.data(), 0.0, C.data());
  EXPECT_EQ(C, (std::vector<double>{19, 22, 43, 50}));
  // alpha == 0 reads neither operand (NaN there must not leak); K == 0 takes no operands at all.
  std::vector<double> poisoned(4, nan);
  cpu::gemm<double>(false, false, 2, 2, 2, 0.0, poisoned.data(), poisoned.data(), 0.5, C.data());
  EXPECT_EQ(C, (std::vector<double>{9.5, 11, 21.5, 25}));
  cpu::gemm<double>(true, true, 2, 2, 0, 1.0, nullptr, nullptr, 2.0, C.data());
  EXPECT_EQ(C, (std::vector<double>{19, 22, 43, 50}));
  cpu::gemm<double>(false, false, 2, 2, 0, 1.0, nullptr, nullptr, 0.0, C.data());
  EXPECT_EQ(C, (std::vector<double>(4, 0.0)));
}

TEST(GemmNoBlas, ResultDoesNotDependOnThreadCount) {
  std::mt19937_64 rng(7);
  const int64_t M = 96, N = 700, K = 300;
  const auto A = random_values<float>(rng, M * K);
  const auto B = random_values<float>(rng, N * K);
  const auto C = random_values<float>(rng, M * N);
  const int saved = omp_get_max_threads();
  std::vector<float> results[2] = {C, C};
  for (int t = 0; t < 2; ++t) {
    omp_set_num_threads(t == 0 ? 1 : 4);
    cpu::gemm<float>(true, true, M, N, K, 0.5f, A.data(), B.data(), 1.0f, results[t].data());
  }
  omp_set_num_threads(saved);
  EXPECT_EQ(results[0], results[1]);
}

}  // namespace
}  // namespace dj
