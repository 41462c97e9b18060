// The SIMD softmax exp of kernels/cpu/vector_exp.h against a long double std::exp, in float and
// double, over its whole domain (x <= 0) including underflow, -inf and ragged row lengths.
#include "kernels/cpu/vector_exp.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace dj {
namespace {

template <typename T>
class VectorExp : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(VectorExp, Types);

// Largest error accepted in one value: 2 ulp of the exact value, and where exp underflows, twice
// the smallest normal number (the SIMD exp flushes to 0 once exp(x) < ~1.5x that, before
// std::exp reaches subnormals).
template <typename T>
long double tolerance(long double exact) {
  return std::max(2.0L * std::numeric_limits<T>::epsilon() * exact,
                  2.0L * std::numeric_limits<T>::min());
}

// Largest error accepted in a sum: the values' 2 ulp, plus the rounding of summing ~1e5 terms
// in double.
template <typename T>
double sum_tolerance(long double exact_sum) {
  return (2.0 * std::numeric_limits<T>::epsilon() + 1e-12) * static_cast<double>(exact_sum);
}

TYPED_TEST(VectorExp, MatchesStdExpFromZeroToUnderflow) {
  using T = TypeParam;
  // Past -750 even a double exp is 0; the grid is fine enough to land on every reduction
  // interval of ln 2 many times.
  const int64_t n = 200003;
  const long double lowest = -750.0L;
  std::vector<T> x(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j)
    x[static_cast<size_t>(j)] = static_cast<T>(lowest * static_cast<long double>(j) / (n - 1));
  std::vector<T> y(x.size());
  const double sum = cpu::exp_shifted(x.data(), n, T(0), y.data());
  long double exact_sum = 0.0L;
  for (size_t j = 0; j < x.size(); ++j) {
    const long double exact = std::exp(static_cast<long double>(x[j]));
    exact_sum += exact;
    ASSERT_FALSE(std::isnan(y[j])) << "x = " << x[j];
    ASSERT_GE(y[j], T(0)) << "x = " << x[j];
    ASSERT_LE(std::fabs(static_cast<long double>(y[j]) - exact), tolerance<T>(exact))
        << "x = " << x[j];
  }
  EXPECT_NEAR(sum, static_cast<double>(exact_sum), sum_tolerance<T>(exact_sum));
}

TYPED_TEST(VectorExp, SpecialValues) {
  using T = TypeParam;
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> x = {T(0), -inf, std::numeric_limits<T>::lowest(), T(-1e4), T(-800), T(-1)};
  std::vector<T> y(x.size());
  const double sum = cpu::exp_shifted(x.data(), static_cast<int64_t>(x.size()), T(0), y.data());
  EXPECT_EQ(y[0], T(1));
  for (size_t j = 1; j < 5; ++j) EXPECT_EQ(y[j], T(0)) << "x = " << x[j];
  EXPECT_NEAR(y[5], std::exp(T(-1)), 2 * std::numeric_limits<T>::epsilon());
  EXPECT_NEAR(sum, 1.0 + std::exp(-1.0), 4 * std::numeric_limits<T>::epsilon());
  // A shift of -inf (a row whose maximum is -inf) leaves the -inf entries NaN, as std::exp does.
  T minus_inf = -inf;
  EXPECT_TRUE(std::isnan(cpu::exp_shifted(&minus_inf, 1, -inf, &minus_inf)));
}

// Every length from empty to a few vectors past the lane count: the ragged tail must give the
// values and the sum of the full-vector path, in place or without storing.
TYPED_TEST(VectorExp, RaggedLengthsInPlaceAndSumOnly) {
  using T = TypeParam;
  std::vector<T> row(37);
  for (size_t j = 0; j < row.size(); ++j)
    row[j] = static_cast<T>(std::sin(static_cast<double>(j)) * 5.0);
  EXPECT_EQ(cpu::exp_shifted(row.data(), 0, T(0), row.data()), 0.0);
  for (int64_t n = 1; n <= static_cast<int64_t>(row.size()); ++n) {
    std::vector<T> in(row.begin(), row.begin() + n);
    const T max = cpu::row_max(in.data(), n);
    EXPECT_EQ(max, *std::max_element(in.begin(), in.end())) << "n = " << n;
    const double sum_only = cpu::exp_shifted(in.data(), n, max, static_cast<T*>(nullptr));
    const double sum = cpu::exp_shifted(in.data(), n, max, in.data());
    EXPECT_EQ(sum_only, sum) << "n = " << n;
    long double exact_sum = 0.0L;
    for (int64_t j = 0; j < n; ++j) {
      // The argument is rounded to T before the exp, as exp_shifted does.
      const T argument = row[static_cast<size_t>(j)] - max;
      const long double exact = std::exp(static_cast<long double>(argument));
      exact_sum += exact;
      EXPECT_LE(std::fabs(static_cast<long double>(in[static_cast<size_t>(j)]) - exact),
                tolerance<T>(exact))
          << "n = " << n << ", j = " << j;
    }
    EXPECT_NEAR(sum, static_cast<double>(exact_sum), sum_tolerance<T>(exact_sum)) << "n = " << n;
  }
}

}  // namespace
}  // namespace dj
