// The CPU ops' 16-byte (SSE2) and 32-byte (AVX2) SIMD code give the same bits: the softmax exp and
// its sum, the row maximum, and the exact GELU forward and backward, on random rows of every
// ragged length, on rows long enough to be split among threads, and on special values.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/gelu.h"
#include "kernels/cpu/simd.h"
#include "kernels/cpu/vector_exp.h"

namespace dj {
namespace {

// Runs f under each width and restores the width in use before.
class SimdWidths : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cpu::cpu_has_avx2()) GTEST_SKIP() << "this CPU has no AVX2: only the 16-byte code runs here";
    saved_ = cpu::simd_width();
  }
  void TearDown() override {
    if (cpu::cpu_has_avx2()) cpu::set_simd_width(saved_);
  }
  template <typename F>
  static auto narrow(F f) {
    cpu::set_simd_width(cpu::SimdWidth::Bytes16);
    return f();
  }
  template <typename F>
  static auto wide(F f) {
    cpu::set_simd_width(cpu::SimdWidth::Bytes32);
    return f();
  }

 private:
  cpu::SimdWidth saved_ = cpu::SimdWidth::Bytes16;
};

template <typename T>
std::vector<T> random_values(size_t n, uint32_t seed, double scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<T> x(n);
  for (auto& v : x) v = static_cast<T>(normal(rng) * scale);
  return x;
}

template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  // memcmp may not be given the null data() of an empty vector, even for 0 bytes.
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

template <typename T>
void expect_exp_same_bits(const std::vector<T>& row) {
  const int64_t n = static_cast<int64_t>(row.size());
  struct Result {
    T max;
    std::vector<T> out;
    double sum, sum_only;
  };
  const auto run = [&] {
    Result r{n > 0 ? cpu::row_max(row.data(), n) : T(0), std::vector<T>(row.size()), 0.0, 0.0};
    r.sum = cpu::exp_shifted(row.data(), n, r.max, r.out.data());
    r.sum_only = cpu::exp_shifted(row.data(), n, r.max, static_cast<T*>(nullptr));
    return r;
  };
  cpu::set_simd_width(cpu::SimdWidth::Bytes16);
  const Result narrow = run();
  cpu::set_simd_width(cpu::SimdWidth::Bytes32);
  const Result wide = run();
  EXPECT_EQ(std::memcmp(&narrow.max, &wide.max, sizeof(T)), 0) << "n = " << n;
  EXPECT_TRUE(same_bits(narrow.out, wide.out)) << "n = " << n;
  EXPECT_EQ(std::memcmp(&narrow.sum, &wide.sum, sizeof(double)), 0) << "n = " << n;
  EXPECT_EQ(std::memcmp(&narrow.sum_only, &wide.sum_only, sizeof(double)), 0) << "n = " << n;
}

TEST_F(SimdWidths, ExpShiftedAndRowMaxFloat) {
  for (size_t n = 0; n <= 200; ++n) expect_exp_same_bits(random_values<float>(n, static_cast<uint32_t>(n), 6.0));
  expect_exp_same_bits(random_values<float>(50304, 7, 4.0));  // a vocabulary row
}

TEST_F(SimdWidths, ExpShiftedAndRowMaxDouble) {
  for (size_t n = 0; n <= 200; ++n) expect_exp_same_bits(random_values<double>(n, static_cast<uint32_t>(n), 6.0));
  expect_exp_same_bits(random_values<double>(50304, 7, 4.0));
}

TEST_F(SimdWidths, ExpShiftedSpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> row = {0.0f, -inf, -1e30f, -87.5f, -86.9f, -0.0f, -1e-40f, -103.0f, -20.0f};
  for (int repeat = 0; repeat < 4; ++repeat) row.insert(row.end(), row.begin(), row.begin() + 9);
  expect_exp_same_bits(row);
}

TEST_F(SimdWidths, GeluForwardAndBackward) {
  // Every ragged length around the lane counts, a length past the threads' threshold, and the
  // series/erfc crossover and tails.
  std::vector<size_t> lengths;
  for (size_t n = 1; n <= 40; ++n) lengths.push_back(n);
  lengths.push_back((size_t{1} << 16) + 5);
  for (const size_t n : lengths) {
    std::vector<float> x = random_values<float>(n, static_cast<uint32_t>(n) + 11, 3.0);
    const std::vector<float> dy = random_values<float>(n, static_cast<uint32_t>(n) + 12, 1.0);
    if (n == 40) {
      const float special[] = {0.0f, -0.0f, 0.75f, -0.75f, 0.7499999f, 9.0f, -9.0f, -14.0f, 40.0f, -40.0f, 1e-20f};
      std::copy(std::begin(special), std::end(special), x.begin());
    }
    const auto run = [&] {
      std::vector<float> y(n), dx(n);
      cpu::gelu_forward(y.data(), x.data(), static_cast<int64_t>(n), cpu::GeluKind::Erf);
      cpu::gelu_backward(dx.data(), dy.data(), x.data(), static_cast<int64_t>(n), cpu::GeluKind::Erf);
      return std::make_pair(y, dx);
    };
    const auto narrow_result = narrow(run);
    const auto wide_result = wide(run);
    EXPECT_TRUE(same_bits(narrow_result.first, wide_result.first)) << "forward, n = " << n;
    EXPECT_TRUE(same_bits(narrow_result.second, wide_result.second)) << "backward, n = " << n;
  }
}

TEST(SimdWidth, DefaultIsTheWidestTheCpuHas) {
  // The test runs without DIJIANG_SIMD (ctest sets none).
  if (std::getenv("DIJIANG_SIMD") != nullptr) GTEST_SKIP() << "DIJIANG_SIMD is set";
  EXPECT_EQ(cpu::simd_width(), cpu::cpu_has_avx2() ? cpu::SimdWidth::Bytes32 : cpu::SimdWidth::Bytes16);
  EXPECT_EQ(cpu::simd_description(cpu::SimdWidth::Bytes32).find("8 float lanes") != std::string::npos, true);
}

}  // namespace
}  // namespace dj
