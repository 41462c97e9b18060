// Attention transfer (GPTNeoXModel::transfer): the loss, the mean squared difference between the
// converted attention's output and the softmax attention's on the same inputs summed over layers,
// and its gradient against fp64 finite differences; which tensors receive a gradient; the CPU
// kernel behind it. The stages that use it are tested in tests/cli/train_stages.sh.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/cross_entropy.h"
#include "model_test_support.h"
#include "trainer/model/parameters.h"

namespace dj {
namespace {

ModelConfig transfer_config(bool parallel) {
  ModelConfig c = test::tiny_config(parallel, "gelu");
  c.attention = AttentionKind::DiJiang;
  c.dijiang.chunk = 4;
  c.dijiang.learnable_decay = true;
  c.dijiang.feature_weights = true;
  return c;
}

// Random parameters with a decay below 1, as in the whole-model gradient checks.
void randomise(GPTNeoX<double>& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (auto& p : model.parameters()) p = normal(rng);
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    const std::vector<double> schedule = reference_log_gamma(model.config().num_heads);
    std::copy(schedule.begin(), schedule.end(),
              model.parameters().begin() + model.layout().view(layer_prefix(l) + "attention.log_gamma").offset);
  }
}

std::vector<int32_t> token_ids(int64_t n, int32_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[static_cast<size_t>(i)] = static_cast<int32_t>((i * 7 + 3) % vocab);
  return ids;
}

TEST(AttentionTransfer, GradientOfTheAddedTensorsMatchesFiniteDifferences) {
  for (const bool parallel : {true, false}) {
    SCOPED_TRACE(parallel ? "parallel residual" : "sequential residual");
    GPTNeoX<double> model(transfer_config(parallel));
    randomise(model, 3);
    const int64_t batch = 2, seq = 9;
    const std::vector<int32_t> ids = token_ids(batch * seq, 23);
    model.zero_gradients();
    const double loss = model.transfer(ids.data(), batch, seq, 0.75);
    EXPECT_GT(loss, 0.0);
    const std::vector<double> analytic = model.gradients();

    test::GradCheckOptions options;
    options.eps = 1e-5;
    std::mt19937_64 rng(5);
    for (const auto& view : model.layout().views()) {
      if (!added_by_conversion(view.name) || !view.trainable) continue;
      std::uniform_int_distribution<int64_t> pick(0, view.numel() - 1);
      for (int i = 0; i < 5; ++i) options.indices.push_back(static_cast<size_t>(view.offset + pick(rng)));
    }
    std::vector<double> x = model.parameters();
    const auto objective = [&](std::vector<double>& params) {
      model.parameters() = params;
      return 0.75 * model.transfer(ids.data(), batch, seq, 0.0);
    };
    const test::GradCheckResult r = test::gradcheck(objective, x, analytic, options);
    EXPECT_LE(r.max_error, 1e-6) << r;
  }
}

// The teacher's fixed copy of the query_key_value weights (set_transfer_teacher): with it equal to
// the model's own, the loss is unchanged; once the model's q and k move, the teacher does not, so
// the gradient of q and k's weights is the loss's whole derivative: finite differences agree.
std::vector<std::vector<double>> qkv_of(const GPTNeoX<double>& model, const char* tensor) {
  std::vector<std::vector<double>> out;
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    const auto& view = model.layout().view(layer_prefix(l) + "attention.query_key_value." + tensor);
    out.emplace_back(model.parameters().begin() + view.offset, model.parameters().begin() + view.offset + view.numel());
  }
  return out;
}

TEST(AttentionTransfer, AFixedTeacherMakesQueryAndKeyTrainable) {
  ModelConfig config = transfer_config(true);
  config.attention_bias = true;
  GPTNeoX<double> model(config);
  randomise(model, 8);
  const int64_t batch = 2, seq = 9;
  const std::vector<int32_t> ids = token_ids(batch * seq, 23);
  const double own = model.transfer(ids.data(), batch, seq, 0.0);
  model.set_transfer_teacher(qkv_of(model, "weight"), qkv_of(model, "bias"));
  model.zero_gradients();
  EXPECT_EQ(model.transfer(ids.data(), batch, seq, 1.0), own);
  const std::vector<double> analytic = model.gradients();

  test::GradCheckOptions options;
  options.eps = 1e-4;  // the loss is a small sum of squares: a larger step keeps rounding below 1e-7
  std::mt19937_64 rng(12);
  const int64_t D = config.hidden_size, d = config.head_dim();
  for (int64_t l = 0; l < config.num_layers; ++l) {
    // Rows of q and k (each head's first 2d of its 3d rows), weight and bias.
    const auto& weight = model.layout().view(layer_prefix(l) + "attention.query_key_value.weight");
    const auto& bias = model.layout().view(layer_prefix(l) + "attention.query_key_value.bias");
    std::uniform_int_distribution<int64_t> head(0, config.num_heads - 1), row(0, 2 * d - 1), column(0, D - 1);
    for (int i = 0; i < 6; ++i) {
      const int64_t r = head(rng) * 3 * d + row(rng);
      options.indices.push_back(static_cast<size_t>(weight.offset + r * D + column(rng)));
      options.indices.push_back(static_cast<size_t>(bias.offset + head(rng) * 3 * d + row(rng)));
    }
    const auto& gate = model.layout().view(layer_prefix(l) + "attention.W_G");
    options.indices.push_back(static_cast<size_t>(gate.offset + 5));
  }
  std::vector<double> x = model.parameters();
  const auto objective = [&](std::vector<double>& params) {
    model.parameters() = params;
    return model.transfer(ids.data(), batch, seq, 0.0);
  };
  const test::GradCheckResult r = test::gradcheck(objective, x, analytic, options);
  EXPECT_LE(r.max_error, 1e-6) << r;
  // Back to the model's own weights.
  model.parameters() = x;
  model.set_transfer_teacher({}, {});
  EXPECT_EQ(model.transfer(ids.data(), batch, seq, 0.0), own);
  EXPECT_THROW(model.set_transfer_teacher({{1.0}}, {}), Error);
}

TEST(AttentionTransfer, OnlyTheAttentionReceivesGradients) {
  GPTNeoX<double> model(transfer_config(true));
  randomise(model, 4);
  const std::vector<int32_t> ids = token_ids(2 * 7, 23);
  model.zero_gradients();
  model.transfer(ids.data(), 2, 7);
  for (const auto& view : model.layout().views()) {
    double norm = 0.0;
    for (int64_t i = 0; i < view.numel(); ++i) norm += std::abs(model.gradients()[static_cast<size_t>(view.offset + i)]);
    const bool attention = view.name.find(".attention.") != std::string::npos;
    if (!attention || !view.trainable)
      EXPECT_EQ(norm, 0.0) << view.name;  // the stream, the MLPs, the LayerNorms, the head: untouched
    else
      EXPECT_GT(norm, 0.0) << view.name;
  }
}

TEST(AttentionTransfer, LossSumsTheLayersAndAccumulatesGradients) {
  // One pass with gradient weight w adds w times the gradient of weight 1; the loss is the same.
  GPTNeoX<double> model(transfer_config(false));
  randomise(model, 6);
  const std::vector<int32_t> ids = token_ids(3 * 6, 23);
  model.zero_gradients();
  const double once = model.transfer(ids.data(), 3, 6, 1.0);
  const std::vector<double> single = model.gradients();
  const double twice = model.transfer(ids.data(), 3, 6, 0.5);
  EXPECT_EQ(once, twice);
  for (size_t i = 0; i < single.size(); ++i) EXPECT_NEAR(model.gradients()[i], 1.5 * single[i], 1e-12 + 1e-12 * std::abs(single[i]));
  // More layers, more terms: a one-layer prefix of the same weights has a smaller loss.
  ModelConfig one = transfer_config(false);
  one.num_layers = 1;
  GPTNeoX<double> first(one);
  for (const auto& view : first.layout().views()) {
    const auto& source = model.layout().view(view.name);
    std::copy_n(model.parameters().begin() + source.offset, view.numel(), first.parameters().begin() + view.offset);
  }
  const double first_layer = first.transfer(ids.data(), 3, 6, 0.0);
  EXPECT_GT(first_layer, 0.0);
  EXPECT_LT(first_layer, once);
}

TEST(AttentionTransfer, RefusesSoftmaxAttention) {
  GPTNeoX<double> model(test::tiny_config(true, "gelu"));
  const std::vector<int32_t> ids = token_ids(4, 23);
  EXPECT_THROW(model.transfer(ids.data(), 1, 4), Error);
}

TEST(SquaredError, SumsInDoubleAndWritesTheScaledDifference) {
  std::mt19937_64 rng(9);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const int64_t n : {int64_t(0), int64_t(1), int64_t(8191), int64_t(8192), int64_t(20001)}) {
    std::vector<float> a(static_cast<size_t>(n)), b(static_cast<size_t>(n)), grad(static_cast<size_t>(n));
    for (auto& v : a) v = normal(rng);
    for (auto& v : b) v = normal(rng);
    double expected = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      const double diff = static_cast<double>(a[static_cast<size_t>(i)] - b[static_cast<size_t>(i)]);
      expected += diff * diff;
    }
    const double sum = cpu::squared_error<float>(grad.data(), a.data(), b.data(), n, 0.5f);
    EXPECT_NEAR(sum, expected, 1e-12 * (1.0 + expected)) << n;
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(grad[static_cast<size_t>(i)], 0.5f * (a[static_cast<size_t>(i)] - b[static_cast<size_t>(i)]));
    // In place over a, and without a gradient.
    EXPECT_EQ(cpu::squared_error<float>(nullptr, a.data(), b.data(), n, 0.5f), sum);
    std::vector<float> in_place = a;
    EXPECT_EQ(cpu::squared_error<float>(in_place.data(), in_place.data(), b.data(), n, 0.5f), sum);
    EXPECT_EQ(in_place, grad);
  }
}

}  // namespace
}  // namespace dj
