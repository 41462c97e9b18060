// The GPT-NeoX model against goldens computed in float64 from Hugging Face's GPTNeoXForCausalLM
// weights (tests/fixtures/make_fixtures.py), and against fp64 finite differences.
#include <gtest/gtest.h>

#include <random>

#include "fixture_paths.h"
#include "model_test_support.h"
#include "kernels/core/error.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/data/npy.h"
#include "trainer/model/evaluate.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/source.h"

namespace dj {
namespace {

using test::fixture;
using test::relative_error;

std::vector<int32_t> ids_of(const Tensor& t) {
  std::vector<int32_t> ids;
  for (double v : t.to_f64_vector()) ids.push_back(static_cast<int32_t>(v));
  return ids;
}

struct Golden {
  std::string model;     // neox_parallel, ...
  std::string weights;   // f32, bin, sharded, ...
  std::string expected;  // expected.safetensors, expected_f16.safetensors, ...
};

void PrintTo(const Golden& g, std::ostream* os) { *os << g.model << "/" << g.weights; }

class GPTNeoXGolden : public ::testing::TestWithParam<Golden> {};

TEST_P(GPTNeoXGolden, LogitsAndLossMatchTransformers) {
  const Golden g = GetParam();
  const ModelSource source = read_model_source(fixture(g.model + "/" + g.weights));
  const TensorMap expected = read_safetensors(fixture(g.model + "/" + g.expected));
  const Tensor& input = expected.at("input_ids");
  const std::vector<int32_t> ids = ids_of(input);

  GPTNeoX<float> model(source.config);
  model.load(source.tensors, source.path.string());
  const double loss = model.forward(ids.data(), input.dim(0), input.dim(1));
  const double expected_loss = expected.at("loss").to_f64_vector()[0];
  EXPECT_LE(std::abs(loss - expected_loss) / expected_loss, 1e-5) << loss << " vs " << expected_loss;
  const std::vector<double> logits = expected.at("logits").to_f64_vector();
  ASSERT_EQ(model.logits().size(), logits.size());
  EXPECT_LE(relative_error(model.logits(), logits), 1e-5);
}

INSTANTIATE_TEST_SUITE_P(
    Fixtures, GPTNeoXGolden,
    ::testing::Values(Golden{"neox_parallel", "f32", "expected.safetensors"},
                      Golden{"neox_parallel", "bin", "expected.safetensors"},
                      Golden{"neox_parallel", "sharded", "expected.safetensors"},
                      Golden{"neox_parallel", "sharded_bin", "expected.safetensors"},
                      Golden{"neox_parallel", "f16", "expected_f16.safetensors"},
                      Golden{"neox_parallel", "bf16", "expected_bf16.safetensors"},
                      Golden{"neox_sequential", "f32", "expected.safetensors"},
                      Golden{"neox_sequential", "bin", "expected.safetensors"},
                      Golden{"neox_sequential", "f16", "expected_f16.safetensors"},
                      Golden{"neox_sequential", "bf16", "expected_bf16.safetensors"},
                      Golden{"neox_odd", "f32", "expected.safetensors"},
                      Golden{"neox_odd", "bin", "expected.safetensors"},
                      Golden{"neox_odd", "f16", "expected_f16.safetensors"},
                      Golden{"neox_odd", "bf16", "expected_bf16.safetensors"}),
    [](const ::testing::TestParamInfo<Golden>& param_info) {
      return param_info.param.model + "_" + param_info.param.weights;
    });

class GPTNeoXGradients : public ::testing::TestWithParam<std::string> {};

TEST_P(GPTNeoXGradients, EveryParameterGradientMatchesTransformers) {
  const ModelSource source = read_model_source(fixture(GetParam() + "/f32"));
  const TensorMap expected = read_safetensors(fixture(GetParam() + "/expected.safetensors"));
  const Tensor& input = expected.at("input_ids");
  const std::vector<int32_t> ids = ids_of(input);
  GPTNeoX<float> model(source.config);
  model.load(source.tensors, source.path.string());
  model.zero_gradients();
  model.forward(ids.data(), input.dim(0), input.dim(1));
  model.backward();
  for (const auto& view : model.layout().views()) {
    SCOPED_TRACE(view.name);
    const std::vector<double> golden = expected.at("grad." + view.name).to_f64_vector();
    const float* grad = model.gradients().data() + view.offset;
    EXPECT_LE(relative_error(std::vector<float>(grad, grad + view.numel()), golden), 1e-4);
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GPTNeoXGradients,
                         ::testing::Values("neox_parallel", "neox_sequential", "neox_odd"));

TEST(GPTNeoX, WindowedEvaluationMatchesGolden) {
  for (const std::string name : {"neox_parallel", "neox_sequential", "neox_odd"}) {
    SCOPED_TRACE(name);
    const ModelSource source = read_model_source(fixture(name + "/f32"));
    const TensorMap expected = read_safetensors(fixture(name + "/expected.safetensors"));
    const std::vector<int32_t> ids = read_npy_tokens(fixture(name + "/eval_tokens.npy"));
    for (int64_t batch : {1, 4}) {
      const EvalResult r = evaluate_windows<float>(source, ids, 64, batch);
      EXPECT_EQ(r.predicted, static_cast<int64_t>(expected.at("eval_predicted").to_f64_vector()[0]));
      const double golden = expected.at("eval_loss").to_f64_vector()[0];
      EXPECT_LE(std::abs(r.loss_sum / static_cast<double>(r.predicted) - golden) / golden, 1e-5);
    }
  }
}

TEST(GPTNeoX, FiniteDifferencesParallelResidualErfGelu) { test::finite_difference_check(test::tiny_config(true, "gelu")); }
TEST(GPTNeoX, FiniteDifferencesSequentialResidualTanhGelu) { test::finite_difference_check(test::tiny_config(false, "gelu_new")); }

TEST(GPTNeoX, TiedEmbeddingsAndNoAttentionBias) {
  ModelConfig c = test::tiny_config(true, "gelu");
  c.tie_word_embeddings = true;
  c.attention_bias = false;
  test::finite_difference_check(c);
}

TEST(GPTNeoX, GradientsAccumulateAcrossBackwardCalls) {
  const ModelConfig c = test::tiny_config(true, "gelu");
  GPTNeoX<double> model(c);
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (auto& p : model.parameters()) p = normal(rng);
  std::vector<int32_t> ids = {1, 5, 7, 2, 9, 11};
  model.zero_gradients();
  model.forward(ids.data(), 1, 6);
  model.backward();
  const std::vector<double> once = model.gradients();
  model.forward(ids.data(), 1, 6);
  model.backward();
  for (size_t i = 0; i < once.size(); ++i) ASSERT_NEAR(model.gradients()[i], 2 * once[i], 1e-12);
}

// A forward that prepares the backward (the loss gradient written in the cross-entropy pass)
// gives the same loss and bit-identical gradients as the plain forward then backward.
TEST(GPTNeoX, ForwardForBackwardMatchesPlainForward) {
  const ModelConfig c = test::tiny_config(true, "gelu");
  GPTNeoX<float> model(c);
  std::mt19937_64 rng(5);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  for (auto& p : model.parameters()) p = normal(rng);
  const std::vector<int32_t> ids = {1, 5, 7, 2, 9, 11, 3, 3, 8, 0, 22, 4};
  model.zero_gradients();
  const double plain = model.forward(ids.data(), 2, 6);
  model.backward();
  const std::vector<float> expected = model.gradients();
  model.zero_gradients();
  EXPECT_EQ(model.forward(ids.data(), 2, 6, true), plain);
  model.backward();
  EXPECT_EQ(model.gradients(), expected);
  EXPECT_THROW(model.backward(), Error);  // the gradient of one forward is used once
}

TEST(GPTNeoX, LoadRejectsMissingExtraAndMisshapedTensors) {
  const ModelSource source = read_model_source(fixture("neox_parallel/f32"));
  GPTNeoX<float> model(source.config);
  const auto expect_error = [&](TensorMap tensors, const std::string& needle) {
    try {
      model.load(tensors, "ckpt");
      ADD_FAILURE() << "no error, expected: " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  TensorMap missing = source.tensors;
  missing.erase("gpt_neox.layers.1.mlp.dense_4h_to_h.bias");
  expect_error(missing, "ckpt: missing tensors: gpt_neox.layers.1.mlp.dense_4h_to_h.bias");
  TensorMap extra = source.tensors;
  extra.emplace("gpt_neox.layers.9.attention.dense.weight", Tensor(DType::F32, {64, 64}));
  expect_error(extra, "ckpt: unexpected tensors: gpt_neox.layers.9.attention.dense.weight");
  TensorMap misshaped = source.tensors;
  misshaped["embed_out.weight"] = Tensor(DType::F32, {999, 64});
  expect_error(misshaped, "tensor 'embed_out.weight' has shape [999, 64], the config needs [1000, 64]");
  TensorMap integer = source.tensors;
  integer["gpt_neox.final_layer_norm.bias"] = Tensor(DType::I64, {64});
  expect_error(integer, "has dtype I64, expected a floating type");
}

TEST(GPTNeoX, RejectsOutOfRangeTokenIds) {
  const ModelSource source = read_model_source(fixture("neox_parallel/f32"));
  std::vector<int32_t> ids(100, 3);
  ids[57] = 1000;
  EXPECT_THROW(evaluate_windows<float>(source, ids, 16, 2), Error);
}

// Sizes a hostile config.json could give: each is refused with one message before anything
// multiplies them (found by fuzzing: the parameter count overflowed int64).
TEST(GPTNeoX, ConfigRefusesSizesBeyondWhatItCanAddress) {
  const nlohmann::json base = {{"vocab_size", 50}, {"hidden_size", 16}, {"num_hidden_layers", 2},
                               {"num_attention_heads", 2}};
  EXPECT_NO_THROW(ModelConfig::from_hf_json(base, "config.json"));
  const auto refused = [&](const nlohmann::json& patch, const std::string& message) {
    nlohmann::json json = base;
    json.update(patch);
    try {
      ModelConfig::from_hf_json(json, "config.json");
      ADD_FAILURE() << patch.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  };
  refused({{"vocab_size", int64_t{4} << 60}}, "sizes must be below 2^31");
  refused({{"hidden_size", int64_t{1} << 31}}, "sizes must be below 2^31");
  refused({{"max_position_embeddings", int64_t{1} << 40}}, "sizes must be below 2^31");
  refused({{"hidden_size", int64_t{1} << 24}}, "more than this program can address");
  refused({{"num_hidden_layers", int64_t{1} << 30}, {"hidden_size", 1024}}, "more than this program can address");
  nlohmann::json large = base;  // Pythia-12B's sizes are far inside the bound.
  large["vocab_size"] = 50688;
  large["hidden_size"] = 5120;
  large["num_hidden_layers"] = 36;
  large["num_attention_heads"] = 40;
  large["intermediate_size"] = 20480;
  EXPECT_GT(ModelConfig::from_hf_json(large, "config.json").parameter_count(), int64_t{11'000'000'000});
}

}  // namespace
}  // namespace dj
