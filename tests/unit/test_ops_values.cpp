// Values of the CPU ops against naive double references and known constants, float against
// double, error handling, and run-to-run determinism across thread counts.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/rotary.h"
#include "tests/unit/gradcheck.h"

namespace dj {
namespace {

using test::cast_vector;
using test::random_vector;
using test::relative_difference;

// Runs f with the given OpenMP thread count, restoring the previous one afterwards.
template <typename F>
auto with_threads(int threads, F f) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto result = f();
  omp_set_num_threads(saved);
  return result;
}

// ---------------------------------------------------------------------------------------------
// gemm and linear

// C = alpha op(A) op(B) + beta C with op(A) [M,K] and op(B) [K,N].
std::vector<double> naive_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha,
                               const std::vector<double>& A, const std::vector<double>& B,
                               double beta, std::vector<double> C) {
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0.0;
      for (int64_t k = 0; k < K; ++k)
        sum += (ta ? A[k * M + m] : A[m * K + k]) * (tb ? B[n * K + k] : B[k * N + n]);
      C[m * N + n] = alpha * sum + beta * C[m * N + n];
    }
  return C;
}

TEST(OpsGemm, AllTransposesMatchNaive) {
  const int64_t M = 5, N = 7, K = 3;
  const auto A = random_vector(M * K, 1), B = random_vector(K * N, 2), C = random_vector(M * N, 3);
  for (const bool ta : {false, true})
    for (const bool tb : {false, true}) {
      const auto want = naive_gemm(ta, tb, M, N, K, 0.7, A, B, -1.3, C);
      std::vector<double> got = C;
      cpu::gemm(ta, tb, M, N, K, 0.7, A.data(), B.data(), -1.3, got.data());
      EXPECT_LE(relative_difference(got, want), 1e-15) << ta << tb;
      std::vector<float> got_f = cast_vector<float>(C);
      const auto Af = cast_vector<float>(A), Bf = cast_vector<float>(B);
      cpu::gemm(ta, tb, M, N, K, 0.7f, Af.data(), Bf.data(), -1.3f, got_f.data());
      EXPECT_LE(relative_difference(got_f, want), 1e-6) << ta << tb;
    }
}

TEST(OpsGemm, EmptyInnerDimensionScalesC) {
  std::vector<double> C = {1, 2, 3, 4};
  cpu::gemm<double>(false, false, 2, 2, 0, 1.0, nullptr, nullptr, 0.5, C.data());
  EXPECT_EQ(C, (std::vector<double>{0.5, 1, 1.5, 2}));
}

// Sizes above the kernels' parallel thresholds, so the OpenMP paths run too.
TEST(OpsLinear, ForwardAndBackwardMatchNaive) {
  const int64_t rows = 300, in = 9, out = 260;
  const auto x = random_vector(rows * in, 10), W = random_vector(out * in, 11),
             b = random_vector(out, 12), dy = random_vector(rows * out, 13);
  std::vector<double> want_y =
      naive_gemm(false, true, rows, out, in, 1, x, W, 0, std::vector<double>(rows * out));
  std::vector<double> y(rows * out);
  cpu::linear_forward<double>(y.data(), x.data(), W.data(), nullptr, rows, in, out);
  EXPECT_LE(relative_difference(y, want_y), 1e-14);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < out; ++c) want_y[r * out + c] += b[c];
  cpu::linear_forward(y.data(), x.data(), W.data(), b.data(), rows, in, out);
  EXPECT_LE(relative_difference(y, want_y), 1e-14);

  // Gradients start non-zero: dW and db always accumulate, dx only when asked.
  const auto dx0 = random_vector(rows * in, 14), dW0 = random_vector(out * in, 15),
             db0 = random_vector(out, 16);
  const auto want_dx = naive_gemm(false, false, rows, in, out, 1, dy, W, 0, dx0);
  const auto want_dx_acc = naive_gemm(false, false, rows, in, out, 1, dy, W, 1, dx0);
  const auto want_dW = naive_gemm(true, false, out, in, rows, 1, dy, x, 1, dW0);
  std::vector<double> want_db = db0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < out; ++c) want_db[c] += dy[r * out + c];

  std::vector<double> dx = dx0, dW = dW0, db = db0;
  cpu::linear_backward(dx.data(), dW.data(), db.data(), dy.data(), x.data(), W.data(), rows, in,
                       out, false);
  EXPECT_LE(relative_difference(dx, want_dx), 1e-14);
  EXPECT_LE(relative_difference(dW, want_dW), 1e-14);
  EXPECT_LE(relative_difference(db, want_db), 1e-14);
  dx = dx0;
  cpu::linear_backward<double>(dx.data(), nullptr, nullptr, dy.data(), x.data(), W.data(), rows, in,
                               out, true);
  EXPECT_LE(relative_difference(dx, want_dx_acc), 1e-14);

  const auto xf = cast_vector<float>(x), Wf = cast_vector<float>(W), dyf = cast_vector<float>(dy);
  std::vector<float> dxf = cast_vector<float>(dx0), dWf = cast_vector<float>(dW0),
                     dbf = cast_vector<float>(db0);
  cpu::linear_backward(dxf.data(), dWf.data(), dbf.data(), dyf.data(), xf.data(), Wf.data(), rows,
                       in, out, false);
  EXPECT_LE(relative_difference(dxf, want_dx), 1e-5);
  EXPECT_LE(relative_difference(dWf, want_dW), 1e-5);
  EXPECT_LE(relative_difference(dbf, want_db), 1e-5);
}

// ---------------------------------------------------------------------------------------------
// layernorm

TEST(OpsLayerNorm, MatchesNaive) {
  const int64_t rows = 37, channels = 70;
  auto x = random_vector(rows * channels, 20, -2, 2);
  for (int64_t i = 0; i < rows * channels; ++i) x[i] += static_cast<double>(i / channels) - 10;
  const auto w = random_vector(channels, 21), b = random_vector(channels, 22);
  const double eps = 1e-5;
  std::vector<double> want_y(rows * channels), want_mean(rows), want_rstd(rows);
  for (int64_t r = 0; r < rows; ++r) {
    double mean = 0.0, var = 0.0;
    for (int64_t c = 0; c < channels; ++c) mean += x[r * channels + c] / channels;
    for (int64_t c = 0; c < channels; ++c)
      var += (x[r * channels + c] - mean) * (x[r * channels + c] - mean) / channels;
    want_mean[r] = mean;
    want_rstd[r] = 1.0 / std::sqrt(var + eps);
    for (int64_t c = 0; c < channels; ++c)
      want_y[r * channels + c] = (x[r * channels + c] - mean) * want_rstd[r] * w[c] + b[c];
  }
  std::vector<double> y(rows * channels), mean(rows), rstd(rows);
  cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows,
                         channels, eps);
  EXPECT_LE(relative_difference(y, want_y), 1e-14);
  EXPECT_LE(relative_difference(mean, want_mean), 1e-14);
  EXPECT_LE(relative_difference(rstd, want_rstd), 1e-14);

  const auto xf = cast_vector<float>(x), wf = cast_vector<float>(w), bf = cast_vector<float>(b);
  std::vector<float> yf(rows * channels), meanf(rows), rstdf(rows);
  cpu::layernorm_forward(yf.data(), meanf.data(), rstdf.data(), xf.data(), wf.data(), bf.data(),
                         rows, channels, eps);
  EXPECT_LE(relative_difference(yf, want_y), 1e-5);
}

// The backward accumulates into all three gradients; float agrees with double.
TEST(OpsLayerNorm, BackwardAccumulatesAndFloatMatchesDouble) {
  const int64_t rows = 33, channels = 130;
  const auto x = random_vector(rows * channels, 30, -3, 3), w = random_vector(channels, 31),
             b = random_vector(channels, 32), dy = random_vector(rows * channels, 33);
  std::vector<double> y(rows * channels), mean(rows), rstd(rows);
  cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows,
                         channels, 1e-5);
  std::vector<double> dx(rows * channels, 0.0), dw(channels, 0.0), db(channels, 0.0);
  cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                          mean.data(), rstd.data(), rows, channels);
  const auto dx0 = random_vector(rows * channels, 34), dw0 = random_vector(channels, 35),
             db0 = random_vector(channels, 36);
  std::vector<double> dx_acc = dx0, dw_acc = dw0, db_acc = db0;
  cpu::layernorm_backward(dx_acc.data(), dw_acc.data(), db_acc.data(), dy.data(), x.data(),
                          w.data(), mean.data(), rstd.data(), rows, channels);
  for (size_t i = 0; i < dx.size(); ++i) EXPECT_NEAR(dx_acc[i], dx0[i] + dx[i], 1e-13);
  for (size_t i = 0; i < dw.size(); ++i) EXPECT_NEAR(dw_acc[i], dw0[i] + dw[i], 1e-13);
  for (size_t i = 0; i < db.size(); ++i) EXPECT_NEAR(db_acc[i], db0[i] + db[i], 1e-13);
  // A null gradient is skipped; the others are unchanged by its absence.
  std::vector<double> dw_only(channels, 0.0);
  cpu::layernorm_backward<double>(nullptr, dw_only.data(), nullptr, dy.data(), x.data(), w.data(),
                                  mean.data(), rstd.data(), rows, channels);
  EXPECT_EQ(dw_only, dw);

  const auto xf = cast_vector<float>(x), wf = cast_vector<float>(w), bf = cast_vector<float>(b),
             dyf = cast_vector<float>(dy);
  std::vector<float> yf(rows * channels), meanf(rows), rstdf(rows);
  cpu::layernorm_forward(yf.data(), meanf.data(), rstdf.data(), xf.data(), wf.data(), bf.data(),
                         rows, channels, 1e-5);
  std::vector<float> dxf(rows * channels, 0.0f), dwf(channels, 0.0f), dbf(channels, 0.0f);
  cpu::layernorm_backward(dxf.data(), dwf.data(), dbf.data(), dyf.data(), xf.data(), wf.data(),
                          meanf.data(), rstdf.data(), rows, channels);
  EXPECT_LE(relative_difference(dxf, dx), 1e-5);
  EXPECT_LE(relative_difference(dwf, dw), 1e-5);
  EXPECT_LE(relative_difference(dbf, db), 1e-5);
}

// ---------------------------------------------------------------------------------------------
// gelu

TEST(OpsGelu, KnownValues) {
  const std::vector<double> x = {0.0, 1.0, -1.0, 3.0, 12.0, -12.0};
  std::vector<double> y(x.size()), dy(x.size(), 1.0);
  cpu::gelu_forward(y.data(), x.data(), 6, cpu::GeluKind::Erf);
  EXPECT_EQ(y[0], 0.0);
  EXPECT_NEAR(y[1], 0.8413447460685429, 1e-15);      // Phi(1)
  EXPECT_NEAR(y[2], 0.8413447460685429 - 1, 1e-15);  // gelu(-x) = gelu(x) - x
  EXPECT_NEAR(y[3], 2.9959503059051097, 1e-15);      // 3 Phi(3)
  EXPECT_EQ(y[4], 12.0);
  EXPECT_EQ(y[5], -0.0);
  cpu::gelu_backward(dy.data(), dy.data(), x.data(), 6, cpu::GeluKind::Erf);  // aliased
  EXPECT_EQ(dy[0], 0.5);
  EXPECT_NEAR(dy[1], 1.0833154705876863, 1e-15);  // Phi(1) + phi(1)

  cpu::gelu_forward(y.data(), x.data(), 6, cpu::GeluKind::Tanh);
  EXPECT_EQ(y[0], 0.0);
  EXPECT_NEAR(y[1], 0.8411919906082768, 1e-15);
  EXPECT_NEAR(y[2], 0.8411919906082768 - 1, 1e-15);
  EXPECT_EQ(y[4], 12.0);
  std::fill(dy.begin(), dy.end(), 1.0);
  cpu::gelu_backward(dy.data(), dy.data(), x.data(), 6, cpu::GeluKind::Tanh);
  EXPECT_EQ(dy[0], 0.5);
}

TEST(OpsGelu, FloatMatchesDouble) {
  const int64_t n = 70000;  // above the parallel threshold
  const auto x = random_vector(n, 40, -6, 6), dy = random_vector(n, 41);
  const auto xf = cast_vector<float>(x), dyf = cast_vector<float>(dy);
  for (const auto kind : {cpu::GeluKind::Erf, cpu::GeluKind::Tanh}) {
    std::vector<double> y(n), dx(n);
    std::vector<float> yf(n), dxf(n);
    cpu::gelu_forward(y.data(), x.data(), n, kind);
    cpu::gelu_forward(yf.data(), xf.data(), n, kind);
    cpu::gelu_backward(dx.data(), dy.data(), x.data(), n, kind);
    cpu::gelu_backward(dxf.data(), dyf.data(), xf.data(), n, kind);
    EXPECT_LE(relative_difference(yf, y), 1e-6);
    EXPECT_LE(relative_difference(dxf, dx), 1e-6);
  }
}

// The float path of the exact GELU runs on SIMD lanes (kernels/cpu/gelu.cpp): close to the double
// reference element by element, the left tail included (where 1 + erff(x / sqrt 2) cancels), the
// same bits for any thread count and wherever an element sits (the ragged end too).
TEST(OpsGelu, FloatErfLanesElementwise) {
  const int64_t n = 160003;  // odd: a ragged end after the whole vectors
  std::vector<double> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = -8.0 + 16.0 * static_cast<double>(i) / static_cast<double>(n - 1);
  const auto xf = cast_vector<float>(x);
  const std::vector<double> exact(xf.begin(), xf.end());  // the float inputs, exactly
  // The reference through erfc, accurate in the left tail too (1 + erf cancels there in double).
  std::vector<double> y(n), dx(n);
  for (int64_t i = 0; i < n; ++i) {
    const double cdf = 0.5 * std::erfc(-exact[i] / std::sqrt(2.0));
    y[i] = exact[i] * cdf;
    dx[i] = cdf + exact[i] * std::exp(-0.5 * exact[i] * exact[i]) / std::sqrt(2.0 * M_PI);
  }
  std::vector<float> yf(n), dxf(n), onesf(n, 1.0f);
  cpu::gelu_forward(yf.data(), xf.data(), n, cpu::GeluKind::Erf);
  cpu::gelu_backward(dxf.data(), onesf.data(), xf.data(), n, cpu::GeluKind::Erf);
  for (int64_t i = 0; i < n; ++i) {
    const double relative = std::abs(yf[i] - y[i]) / std::max(std::abs(y[i]), 1e-300);
    // The exponent -x^2/2 is rounded to float: the relative error grows with it in the tails.
    ASSERT_LE(relative, 5e-7 * (1.0 + exact[i] * exact[i])) << "gelu(" << exact[i] << ")";
    ASSERT_LE(std::abs(dxf[i] - dx[i]), 3e-7) << "gelu'(" << exact[i] << ")";
  }
  for (const int threads : {1, 2, 3}) {
    const auto [again, dagain] = with_threads(threads, [&] {
      std::vector<float> forward(n), backward = onesf;
      cpu::gelu_forward(forward.data(), xf.data(), n, cpu::GeluKind::Erf);
      cpu::gelu_backward(backward.data(), backward.data(), xf.data(), n, cpu::GeluKind::Erf);  // aliased
      return std::pair{forward, backward};
    });
    EXPECT_EQ(again, yf) << threads << " threads";
    EXPECT_EQ(dagain, dxf) << threads << " threads";
  }
  for (const int64_t i : {int64_t{0}, n / 2 + 1, n - 1}) {
    float one = 0.0f;
    cpu::gelu_forward(&one, &xf[i], 1, cpu::GeluKind::Erf);
    EXPECT_EQ(one, yf[i]) << "element " << i << " alone";
  }
  const float special[] = {0.0f, -0.0f, std::numeric_limits<float>::infinity(), std::nanf("")};
  float out[4];
  cpu::gelu_forward(out, special, 4, cpu::GeluKind::Erf);
  EXPECT_EQ(out[0], 0.0f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(out[3]));
}

// ---------------------------------------------------------------------------------------------
// rotary

// The formula of docs/pythia.md, section 2 step 3, written out directly.
std::vector<double> direct_rotary(std::vector<double> x, int64_t BH, int64_t T_len, int64_t d,
                                  int64_t r, int64_t offset) {
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t t = 0; t < T_len; ++t) {
      double* v = x.data() + (bh * T_len + t) * d;
      const std::vector<double> in(v, v + d);
      const double p = static_cast<double>(offset + t);
      for (int64_t i = 0; i < r / 2; ++i) {
        const double f = std::pow(10000.0, -2.0 * i / r);
        v[i] = in[i] * std::cos(p * f) - in[i + r / 2] * std::sin(p * f);
        v[i + r / 2] = in[i + r / 2] * std::cos(p * f) + in[i] * std::sin(p * f);
      }
    }
  return x;
}

TEST(OpsRotary, MatchesFormulaAndBackwardInverts) {
  struct Case {
    int64_t BH, T_len, d, r, offset;
  };
  // Partial (Pythia: r = d/4) with odd d, full, and a generation offset.
  for (const Case c : {Case{3, 9, 7, 4, 0}, Case{2, 40, 64, 16, 0}, Case{1, 5, 8, 8, 1000}}) {
    const auto x = random_vector(c.BH * c.T_len * c.d, 50);
    const auto want = direct_rotary(x, c.BH, c.T_len, c.d, c.r, c.offset);
    std::vector<double> got = x;
    cpu::rotary_forward(got.data(), c.BH, c.T_len, c.d, c.r, 10000.0, c.offset);
    EXPECT_LE(relative_difference(got, want), 1e-14) << "d " << c.d << ", r " << c.r;
    cpu::rotary_backward(got.data(), c.BH, c.T_len, c.d, c.r, 10000.0, c.offset);
    EXPECT_LE(relative_difference(got, x), 1e-14) << "d " << c.d << ", r " << c.r;

    std::vector<float> got_f = cast_vector<float>(x);
    cpu::rotary_forward(got_f.data(), c.BH, c.T_len, c.d, c.r, 10000.0, c.offset);
    EXPECT_LE(relative_difference(got_f, want), 1e-6) << "d " << c.d << ", r " << c.r;
  }
}

// The cos/sin table is computed once per (rotary_dims, base) and grown for longer sequences or
// later offsets; every entry equals the one a fresh computation gives, so rotations are the same
// bits before and after the table grows.
TEST(OpsRotary, CachedTableEqualsRecomputation) {
  const double base = 12345.0;  // used by no other test: the first call below computes the table
  const int64_t BH = 3, T_len = 40, d = 20, r = 16, half = r / 2;
  const auto x = cast_vector<float>(random_vector(BH * T_len * d, 52));
  std::vector<float> before = x;
  cpu::rotary_forward(before.data(), BH, T_len, d, r, base);

  const auto cached = cpu::rotary_table(r, base, T_len);
  EXPECT_GE(cached->positions, T_len);
  EXPECT_EQ(cpu::rotary_table(r, base, T_len - 1).get(), cached.get());  // not recomputed
  const auto fresh = cpu::compute_rotary_table(r, base, cached->positions);
  EXPECT_EQ(cached->cos, fresh->cos);
  EXPECT_EQ(cached->sin, fresh->sin);

  // A later offset grows the table; its entries are still those of a fresh computation.
  std::vector<float> late = x;
  cpu::rotary_forward(late.data(), 1, 3, d, r, base, 997);
  const auto grown = cpu::rotary_table(r, base, 1000);
  EXPECT_NE(grown.get(), cached.get());
  EXPECT_GE(grown->positions, 1000);
  const auto fresh_grown = cpu::compute_rotary_table(r, base, grown->positions);
  EXPECT_EQ(grown->cos, fresh_grown->cos);
  EXPECT_EQ(grown->sin, fresh_grown->sin);
  for (int64_t i = 0; i < cached->positions * half; ++i) {
    ASSERT_EQ(grown->cos[static_cast<size_t>(i)], cached->cos[static_cast<size_t>(i)]);
    ASSERT_EQ(grown->sin[static_cast<size_t>(i)], cached->sin[static_cast<size_t>(i)]);
  }

  std::vector<float> after = x;
  cpu::rotary_forward(after.data(), BH, T_len, d, r, base);
  EXPECT_EQ(after, before);
  cpu::rotary_backward(after.data(), BH, T_len, d, r, base);
  EXPECT_LE(relative_difference(after, x), 1e-6);

  // The offset rotation equals rows 997..999 of a rotation from position 0.
  std::vector<float> from_zero(static_cast<size_t>(1000 * d));
  std::copy(x.begin(), x.begin() + 3 * d, from_zero.begin() + 997 * d);
  cpu::rotary_forward(from_zero.data(), 1, 1000, d, r, base);
  EXPECT_EQ(std::vector<float>(from_zero.begin() + 997 * d, from_zero.end()),
            std::vector<float>(late.begin(), late.begin() + 3 * d));
}

TEST(OpsRotary, ZeroDimsIsNoOpAndBadDimsThrow) {
  const auto x = random_vector(2 * 3 * 5, 51);
  std::vector<double> y = x;
  cpu::rotary_forward(y.data(), 2, 3, 5, 0, 10000.0);
  EXPECT_EQ(y, x);
  EXPECT_THROW(cpu::rotary_forward(y.data(), 2, 3, 5, 3, 10000.0), Error);  // odd
  EXPECT_THROW(cpu::rotary_forward(y.data(), 2, 3, 5, 6, 10000.0), Error);  // wider than d
  EXPECT_THROW(cpu::rotary_forward(y.data(), 2, 3, 5, 4, 10000.0, -1), Error);  // before position 0
  EXPECT_EQ(y, x);
}

// ---------------------------------------------------------------------------------------------
// cross entropy

TEST(OpsCrossEntropy, MatchesNaiveLogSoftmax) {
  const int64_t rows = 6, vocab = 1000;
  const std::vector<int32_t> targets = {0, 999, -1, 17, 500, -100};
  auto logits = random_vector(rows * vocab, 60, -8, 8);
  for (int64_t j = 0; j < vocab; ++j) logits[3 * vocab + j] += 1000.0;  // overflows a naive exp
  const double grad_scale = 0.25;

  double want_loss = 0.0;
  std::vector<double> want_grad(rows * vocab, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] < 0) continue;
    const double* row = logits.data() + r * vocab;
    const double max = *std::max_element(row, row + vocab);
    double sum = 0.0;
    for (int64_t j = 0; j < vocab; ++j) sum += std::exp(row[j] - max);
    const double log_z = max + std::log(sum);
    want_loss += log_z - row[targets[r]];
    for (int64_t j = 0; j < vocab; ++j)
      want_grad[r * vocab + j] = grad_scale * (std::exp(row[j] - log_z) - (j == targets[r]));
  }

  std::vector<double> work = logits;
  const auto no_grad =
      cpu::softmax_cross_entropy(work.data(), targets.data(), rows, vocab, false, grad_scale);
  EXPECT_EQ(work, logits);  // untouched without write_gradient
  EXPECT_EQ(no_grad.count, 4);
  EXPECT_NEAR(no_grad.loss_sum, want_loss, 1e-12 * want_loss);
  const auto with_grad =
      cpu::softmax_cross_entropy(work.data(), targets.data(), rows, vocab, true, grad_scale);
  EXPECT_EQ(with_grad.loss_sum, no_grad.loss_sum);
  EXPECT_LE(relative_difference(work, want_grad), 1e-14);
  for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(work[2 * vocab + j], 0.0);  // ignored row

  std::vector<float> work_f = cast_vector<float>(logits);
  const auto f = cpu::softmax_cross_entropy(work_f.data(), targets.data(), rows, vocab, true,
                                            static_cast<float>(grad_scale));
  EXPECT_NEAR(f.loss_sum, want_loss, 1e-5 * want_loss);
  EXPECT_LE(relative_difference(work_f, want_grad), 1e-5);
}

TEST(OpsCrossEntropy, TargetOutsideVocabularyThrowsBeforeWriting) {
  std::vector<float> logits = {1, 2, 3, 4, 5, 6};
  const std::vector<float> original = logits;
  const std::vector<int32_t> targets = {1, 3};
  try {
    cpu::softmax_cross_entropy(logits.data(), targets.data(), 2, 3, true, 1.0f);
    FAIL() << "expected dj::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("target 3 at row 1"), std::string::npos) << e.what();
  }
  EXPECT_EQ(logits, original);
}

// ---------------------------------------------------------------------------------------------
// embedding

TEST(OpsEmbedding, ForwardGathersAndBackwardScatterAdds) {
  const int64_t vocab = 11, channels = 150;  // several column chunks
  const std::vector<int32_t> ids = {4, 10, 0, 4, 4, 7};
  const int64_t n = static_cast<int64_t>(ids.size());
  const auto table = random_vector(vocab * channels, 70), dout = random_vector(n * channels, 71);
  std::vector<double> out(n * channels);
  cpu::embedding_forward(out.data(), ids.data(), table.data(), n, vocab, channels);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c)
      EXPECT_EQ(out[i * channels + c], table[ids[i] * channels + c]);

  auto dtable = random_vector(vocab * channels, 72);
  auto want = dtable;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < channels; ++c) want[ids[i] * channels + c] += dout[i * channels + c];
  cpu::embedding_backward(dtable.data(), dout.data(), ids.data(), n, channels);
  EXPECT_EQ(dtable, want);  // same additions in the same order
}

TEST(OpsEmbedding, IdOutsideVocabularyThrows) {
  const std::vector<float> table(4 * 2, 1.0f);
  std::vector<float> out(3 * 2);
  for (const int32_t bad : {4, -1}) {
    const std::vector<int32_t> ids = {0, 3, bad};
    try {
      cpu::embedding_forward(out.data(), ids.data(), table.data(), 3, 4, 2);
      FAIL() << "expected dj::Error for id " << bad;
    } catch (const Error& e) {
      const std::string expected = "token id " + std::to_string(bad) + " at position 2";
      EXPECT_NE(std::string(e.what()).find(expected), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// determinism

// The reductions (layernorm dw/db, linear db, embedding scatter, cross-entropy loss) are
// bit-identical whatever the thread count.
TEST(OpsDeterminism, ReductionsIndependentOfThreadCount) {
  const int64_t rows = 2000, channels = 96, vocab = 50;
  const auto x = cast_vector<float>(random_vector(rows * channels, 80, -3, 3));
  const auto w = cast_vector<float>(random_vector(channels, 81));
  const auto dy = cast_vector<float>(random_vector(rows * channels, 82));
  std::vector<int32_t> ids(rows);
  for (int64_t i = 0; i < rows; ++i) ids[i] = static_cast<int32_t>((i * 7919) % vocab);

  auto run = [&] {
    std::vector<float> y(rows * channels), mean(rows), rstd(rows);
    cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), w.data(), rows,
                           channels, 1e-5);
    std::vector<float> dx(rows * channels, 0.0f), dw(channels, 0.0f), db(channels, 0.0f);
    cpu::layernorm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                            mean.data(), rstd.data(), rows, channels);
    std::vector<float> lin_db(channels, 0.0f);
    cpu::linear_backward<float>(nullptr, nullptr, lin_db.data(), dy.data(), nullptr, nullptr, rows,
                                0, channels, false);
    std::vector<float> dtable(vocab * channels, 0.0f);
    cpu::embedding_backward(dtable.data(), dy.data(), ids.data(), rows, channels);
    std::vector<float> logits = y;
    const auto ce =
        cpu::softmax_cross_entropy(logits.data(), ids.data(), rows, channels, true, 1.0f / rows);
    const std::vector<std::vector<float>> arrays = {y, dx, dw, db, lin_db, dtable, logits};
    return std::make_pair(arrays, ce.loss_sum);
  };
  const auto one = with_threads(1, run);
  const auto three = with_threads(3, run);
  EXPECT_EQ(one.first, three.first);
  EXPECT_EQ(one.second, three.second);
}

// OpenBLAS alone gives other last bits on 1, 2 and 3 threads for nearly every shape; gemm cuts
// the product by its shape so that it does not. Shapes from the model (square, wide like the
// vocabulary projection, tall like its weight gradient, tiny) with every transposition, and
// beta 0 and 1.
TEST(OpsDeterminism, GemmIndependentOfThreadCount) {
  struct Shape {
    int64_t M, N, K;
  };
  const Shape shapes[] = {{512, 192, 64}, {64, 256, 512}, {8, 5000, 96}, {1000, 64, 512}, {3, 7, 5}, {130, 129, 70}};
  unsigned seed = 90;
  for (const Shape& s : shapes) {
    const auto A = cast_vector<float>(random_vector(s.M * s.K, seed++));
    const auto B = cast_vector<float>(random_vector(s.K * s.N, seed++));
    const auto C0 = cast_vector<float>(random_vector(s.M * s.N, seed++));
    const auto Ad = random_vector(s.M * s.K, seed++);
    const auto Bd = random_vector(s.K * s.N, seed++);
    for (const bool ta : {false, true})
      for (const bool tb : {false, true})
        for (const float beta : {0.0f, 1.0f}) {
          auto run = [&] {
            std::vector<float> C = C0;
            cpu::gemm<float>(ta, tb, s.M, s.N, s.K, 0.75f, A.data(), B.data(), beta, C.data());
            std::vector<double> Cd(static_cast<size_t>(s.M * s.N), 0.0);
            cpu::gemm<double>(ta, tb, s.M, s.N, s.K, 0.75, Ad.data(), Bd.data(), 0.0, Cd.data());
            return std::pair{C, Cd};
          };
          const auto one = with_threads(1, run);
          for (const int threads : {2, 3, 4}) {
            const auto other = with_threads(threads, run);
            EXPECT_EQ(one.first, other.first) << s.M << "x" << s.N << "x" << s.K << " ta " << ta << " tb " << tb
                                              << " beta " << beta << ", " << threads << " threads";
            EXPECT_EQ(one.second, other.second) << s.M << "x" << s.N << "x" << s.K << " (double), " << threads
                                                << " threads";
          }
          // And the product is the product.
          const std::vector<double> expected =
              naive_gemm(ta, tb, s.M, s.N, s.K, 0.75, cast_vector<double>(A), cast_vector<double>(B), beta,
                         cast_vector<double>(C0));
          for (size_t i = 0; i < expected.size(); ++i)
            ASSERT_NEAR(one.first[i], expected[i], 1e-4 * (1.0 + std::abs(expected[i]))) << i;
        }
  }
}

}  // namespace
}  // namespace dj
