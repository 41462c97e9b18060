// Every differentiable input of every CPU op: the analytic backward in double against central
// finite differences of a random projection L = sum(R o f(inputs)).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/rotary.h"
#include "tests/unit/gradcheck.h"

namespace dj {
namespace {

using test::dot;
using test::gradcheck;
using test::random_vector;

constexpr double kTolerance = 1e-6;

using test::pack;
using test::Packed;

TEST(OpsGradcheck, Linear) {
  const int64_t rows = 4, in = 5, out = 3;
  const auto R = random_vector(rows * out, 1);
  Packed p = pack({random_vector(rows * in, 2), random_vector(out * in, 3), random_vector(out, 4)});
  const size_t x_at = p.offsets[0], w_at = p.offsets[1], b_at = p.offsets[2];
  auto loss = [&](std::vector<double>& v) {
    std::vector<double> y(rows * out);
    cpu::linear_forward(y.data(), v.data() + x_at, v.data() + w_at, v.data() + b_at, rows, in, out);
    return dot(R, y);
  };
  std::vector<double> grad(p.values.size(), 0.0);
  const double* v = p.values.data();
  cpu::linear_backward(grad.data() + x_at, grad.data() + w_at, grad.data() + b_at, R.data(),
                       v + x_at, v + w_at, rows, in, out, false);
  const auto r = gradcheck(loss, p.values, grad);
  EXPECT_LE(r.max_error, kTolerance) << r;
}

TEST(OpsGradcheck, LayerNorm) {
  const int64_t rows = 5, channels = 7;
  const auto R = random_vector(rows * channels, 10);
  // A per-row offset makes the mean matter.
  auto x = random_vector(rows * channels, 11);
  for (int64_t i = 0; i < rows * channels; ++i) x[i] += static_cast<double>(i / channels);
  Packed p = pack({x, random_vector(channels, 12, 0.5, 1.5), random_vector(channels, 13)});
  const size_t x_at = p.offsets[0], w_at = p.offsets[1], b_at = p.offsets[2];
  std::vector<double> mean(rows), rstd(rows);
  auto loss = [&](std::vector<double>& v) {
    std::vector<double> y(rows * channels);
    cpu::layernorm_forward(y.data(), mean.data(), rstd.data(), v.data() + x_at, v.data() + w_at,
                           v.data() + b_at, rows, channels, 1e-5);
    return dot(R, y);
  };
  loss(p.values);  // leaves mean and rstd of the unperturbed input
  std::vector<double> grad(p.values.size(), 0.0);
  const double* v = p.values.data();
  cpu::layernorm_backward(grad.data() + x_at, grad.data() + w_at, grad.data() + b_at, R.data(),
                          v + x_at, v + w_at, mean.data(), rstd.data(), rows, channels);
  const auto r = gradcheck(loss, p.values, grad);
  EXPECT_LE(r.max_error, kTolerance) << r;
}

TEST(OpsGradcheck, Gelu) {
  for (const auto kind : {cpu::GeluKind::Erf, cpu::GeluKind::Tanh}) {
    const int64_t n = 41;
    const auto R = random_vector(n, 20);
    auto x = random_vector(n, 21, -5.0, 5.0);
    auto loss = [&](std::vector<double>& v) {
      std::vector<double> y(n);
      cpu::gelu_forward(y.data(), v.data(), n, kind);
      return dot(R, y);
    };
    std::vector<double> grad(n);
    cpu::gelu_backward(grad.data(), R.data(), x.data(), n, kind);
    const auto r = gradcheck(loss, x, grad);
    EXPECT_LE(r.max_error, kTolerance) << r << " (kind " << static_cast<int>(kind) << ")";
  }
}

TEST(OpsGradcheck, Rotary) {
  const int64_t BH = 2, T_len = 5, d = 7, rotary_dims = 4, offset = 3;
  const auto R = random_vector(BH * T_len * d, 30);
  auto x = random_vector(BH * T_len * d, 31);
  auto loss = [&](std::vector<double>& v) {
    std::vector<double> y = v;
    cpu::rotary_forward(y.data(), BH, T_len, d, rotary_dims, 10000.0, offset);
    return dot(R, y);
  };
  std::vector<double> grad = R;
  cpu::rotary_backward(grad.data(), BH, T_len, d, rotary_dims, 10000.0, offset);
  const auto r = gradcheck(loss, x, grad);
  EXPECT_LE(r.max_error, kTolerance) << r;
}

// T = 7 lies inside one tile; T = 130 spans three query and key blocks with a ragged last one.
TEST(OpsGradcheck, Attention) {
  struct Shape {
    int64_t BH, T_len, d;
  };
  for (const Shape s : {Shape{2, 7, 5}, Shape{1, 130, 3}}) {
    const int64_t n = s.BH * s.T_len * s.d;
    const double scale = 1.0 / std::sqrt(static_cast<double>(s.d));
    const auto R = random_vector(n, 40);
    Packed p =
        pack({random_vector(n, 41, -2, 2), random_vector(n, 42, -2, 2), random_vector(n, 43)});
    const size_t q_at = p.offsets[0], k_at = p.offsets[1], v_at = p.offsets[2];
    std::vector<double> o(n), lse(s.BH * s.T_len);
    auto loss = [&](std::vector<double>& v) {
      cpu::causal_attention_forward(o.data(), lse.data(), v.data() + q_at, v.data() + k_at,
                                    v.data() + v_at, s.BH, s.T_len, s.d, scale);
      return dot(R, o);
    };
    loss(p.values);
    std::vector<double> grad(p.values.size());
    const double* v = p.values.data();
    cpu::causal_attention_backward(grad.data() + q_at, grad.data() + k_at, grad.data() + v_at,
                                   R.data(), v + q_at, v + k_at, v + v_at, o.data(), lse.data(),
                                   s.BH, s.T_len, s.d, scale);
    const auto r = gradcheck(loss, p.values, grad);
    EXPECT_LE(r.max_error, kTolerance)
        << r << " (BH " << s.BH << ", T " << s.T_len << ", d " << s.d << ")";
  }
}

TEST(OpsGradcheck, Embedding) {
  const int64_t vocab = 6, channels = 5;
  const std::vector<int32_t> ids = {3, 0, 3, 5, 3, 1, 0};  // repeats accumulate
  const int64_t n = static_cast<int64_t>(ids.size());
  const auto R = random_vector(n * channels, 50);
  auto table = random_vector(vocab * channels, 51);
  auto loss = [&](std::vector<double>& v) {
    std::vector<double> y(n * channels);
    cpu::embedding_forward(y.data(), ids.data(), v.data(), n, vocab, channels);
    return dot(R, y);
  };
  std::vector<double> grad(table.size(), 0.0);
  cpu::embedding_backward(grad.data(), R.data(), ids.data(), n, channels);
  const auto r = gradcheck(loss, table, grad);
  EXPECT_LE(r.max_error, kTolerance) << r;
}

// The written gradient is d(grad_scale * loss_sum)/dlogits; row 2 is ignored.
TEST(OpsGradcheck, CrossEntropy) {
  const int64_t rows = 4, vocab = 9;
  const std::vector<int32_t> targets = {4, 0, -1, 8};
  const double grad_scale = 1.0 / 3.0;
  auto logits = random_vector(rows * vocab, 60, -3, 3);
  auto loss = [&](std::vector<double>& v) {
    std::vector<double> work = v;
    return grad_scale *
           cpu::softmax_cross_entropy(work.data(), targets.data(), rows, vocab, false, grad_scale)
               .loss_sum;
  };
  std::vector<double> grad = logits;
  cpu::softmax_cross_entropy(grad.data(), targets.data(), rows, vocab, true, grad_scale);
  const auto r = gradcheck(loss, logits, grad);
  EXPECT_LE(r.max_error, kTolerance) << r;
}

}  // namespace
}  // namespace dj
