// Knowledge distillation: cross-entropy plus weight · τ² · KL(softmax(t/τ) ‖ softmax(z/τ)). The
// kernel against a direct fp64 evaluation of the formula and of its derivative; the whole model's
// gradient with the term against fp64 finite differences; the teacher's logits pass.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/cross_entropy.h"
#include "model_test_support.h"

namespace dj {
namespace {

// The loss of one row and its gradient, straight from the definitions, in double.
double reference_row(const std::vector<double>& z, const std::vector<double>& t, int target, double weight,
                     double tau, std::vector<double>& grad) {
  const auto softmax = [](const std::vector<double>& x, double scale) {
    double max = -INFINITY;
    for (double v : x) max = std::max(max, v * scale);
    std::vector<double> p(x.size());
    double sum = 0.0;
    for (size_t j = 0; j < x.size(); ++j) sum += (p[j] = std::exp(x[j] * scale - max));
    for (double& v : p) v /= sum;
    return p;
  };
  const std::vector<double> p = softmax(z, 1.0), ps = softmax(z, 1.0 / tau), pt = softmax(t, 1.0 / tau);
  double kl = 0.0;
  for (size_t j = 0; j < z.size(); ++j) kl += pt[j] * (std::log(pt[j]) - std::log(ps[j]));
  grad.resize(z.size());
  for (size_t j = 0; j < z.size(); ++j) grad[j] = p[j] - (static_cast<int>(j) == target ? 1.0 : 0.0) + weight * tau * (ps[j] - pt[j]);
  return -std::log(p[static_cast<size_t>(target)]) + weight * tau * tau * kl;
}

TEST(Distillation, KernelMatchesTheDefinition) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0.0, 2.0);
  const int64_t rows = 5, vocab = 37;
  for (const double tau : {1.0, 2.5}) {
    SCOPED_TRACE(tau);
    std::vector<double> logits(static_cast<size_t>(rows * vocab)), teacher(logits.size());
    for (auto& v : logits) v = normal(rng);
    for (auto& v : teacher) v = normal(rng);
    const std::vector<int32_t> targets = {3, -1, 0, 36, 17};
    std::vector<double> z = logits;
    const cpu::CrossEntropyResult r =
        cpu::distill_cross_entropy<double>(z.data(), teacher.data(), targets.data(), rows, vocab, true, 0.25, 0.7, tau);
    EXPECT_EQ(r.count, 4);
    double expected = 0.0;
    for (int64_t i = 0; i < rows; ++i) {
      const auto row = [&](const std::vector<double>& x) {
        return std::vector<double>(x.begin() + i * vocab, x.begin() + (i + 1) * vocab);
      };
      std::vector<double> grad;
      if (targets[static_cast<size_t>(i)] < 0) {
        for (int64_t j = 0; j < vocab; ++j) EXPECT_EQ(z[static_cast<size_t>(i * vocab + j)], 0.0);
        continue;
      }
      expected += reference_row(row(logits), row(teacher), targets[static_cast<size_t>(i)], 0.7, tau, grad);
      for (int64_t j = 0; j < vocab; ++j)
        EXPECT_NEAR(z[static_cast<size_t>(i * vocab + j)], 0.25 * grad[static_cast<size_t>(j)], 1e-14) << i << "," << j;
    }
    EXPECT_NEAR(r.loss_sum, expected, 1e-12 * expected);
    // Without a gradient the logits stay; the loss is the same.
    std::vector<double> kept = logits;
    EXPECT_NEAR(cpu::distill_cross_entropy<double>(kept.data(), teacher.data(), targets.data(), rows, vocab, false, 0.25,
                                                   0.7, tau).loss_sum,
                expected, 1e-12 * expected);
    EXPECT_EQ(kept, logits);
  }
  // The teacher's own logits: KL is zero, so loss and gradient are the plain cross-entropy's (up to
  // the rounding of adding and removing the term's two equal parts).
  std::vector<float> z(static_cast<size_t>(rows * vocab)), zc;
  for (auto& v : z) v = static_cast<float>(normal(rng));
  const std::vector<float> teacher = z;
  const std::vector<int32_t> targets = {1, 2, 3, 4, 5};
  zc = z;
  const auto ce = cpu::softmax_cross_entropy<float>(zc.data(), targets.data(), rows, vocab, true, 0.5f);
  std::vector<float> zd = z;
  const auto same = cpu::distill_cross_entropy<float>(zd.data(), teacher.data(), targets.data(), rows, vocab, true, 0.5f,
                                                      3.0, 1.0);
  EXPECT_NEAR(same.loss_sum, ce.loss_sum, 1e-5);
  for (size_t i = 0; i < zd.size(); ++i) EXPECT_NEAR(zd[i], zc[i], 1e-7) << i;
  EXPECT_THROW(cpu::distill_cross_entropy<float>(zd.data(), teacher.data(), targets.data(), rows, vocab, true, 0.5f,
                                                 1.0, 0.0),
               Error);
}

TEST(Distillation, ModelGradientMatchesFiniteDifferences) {
  for (const bool dijiang : {false, true}) {
    SCOPED_TRACE(dijiang ? "DiJiang" : "softmax");
    ModelConfig config = test::tiny_config(true, "gelu");
    if (dijiang) {
      config.attention = AttentionKind::DiJiang;
      config.dijiang.chunk = 4;
    }
    GPTNeoX<double> model(config);
    std::mt19937_64 rng(9);
    std::normal_distribution<double> normal(0.0, 0.3);
    for (auto& p : model.parameters()) p = normal(rng);
    for (const auto& view : model.layout().views())
      if (view.name.ends_with("log_gamma")) {
        const std::vector<double> schedule = reference_log_gamma(view.numel());
        std::copy(schedule.begin(), schedule.end(), model.parameters().begin() + view.offset);
      }
    const int64_t batch = 2, seq = 7;
    std::vector<int32_t> ids(static_cast<size_t>(batch * seq));
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 5 + 2) % 23);
    std::vector<double> teacher(static_cast<size_t>(batch * seq * config.vocab_size));
    for (auto& v : teacher) v = 2.0 * normal(rng);
    GPTNeoX<double>::Distillation distillation{teacher.data(), 0.6, 2.0};

    model.zero_gradients();
    model.forward(ids.data(), batch, seq, true, 1.0, &distillation);
    model.backward();
    const std::vector<double> analytic = model.gradients();
    test::GradCheckOptions options;
    options.eps = 1e-5;
    for (const auto& view : model.layout().views()) {
      if (!view.trainable) continue;
      std::uniform_int_distribution<int64_t> pick(0, view.numel() - 1);
      for (int i = 0; i < 3; ++i) options.indices.push_back(static_cast<size_t>(view.offset + pick(rng)));
    }
    std::vector<double> x = model.parameters();
    const auto loss = [&](std::vector<double>& params) {
      model.parameters() = params;
      return model.forward(ids.data(), batch, seq, true, 1.0, &distillation);
    };
    const test::GradCheckResult r = test::gradcheck(loss, x, analytic, options);
    EXPECT_LE(r.max_error, 1e-6) << r;
  }
}

TEST(Distillation, TeacherLogitsAreTheForwardsLogits) {
  GPTNeoX<double> model(test::tiny_config(false, "gelu"));
  std::mt19937_64 rng(2);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (auto& p : model.parameters()) p = normal(rng);
  std::vector<int32_t> ids(3 * 6);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + 1) % 23);
  model.forward(ids.data(), 3, 6);
  const std::vector<double> expected = model.logits();
  const std::vector<double>& got = model.logits_of(ids.data(), 3, 6);
  ASSERT_EQ(got.size(), expected.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], expected[i], 1e-12) << i;
  GPTNeoX<double>::Distillation distillation{got.data(), 1.0, 1.0};
  EXPECT_THROW(model.forward(ids.data(), 3, 6, false, 1.0, &distillation), Error);
}

}  // namespace
}  // namespace dj
