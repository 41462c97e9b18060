// The model on a ShardedState (one rank): every ZeRO stage sees the parameters and produces the
// gradients of the model's own buffers, tied embeddings and DiJiang attention included:
// bit-identical with one micro-batch, and with several for stages 0-1; stages 2-3 sum per
// micro-batch, which rounds differently (≤ 1e-6). Several ranks are tested under mpirun
// (tests/mpi).
#include <gtest/gtest.h>

#include <random>

#include "comm/single_communicator.h"
#include "model_test_support.h"
#include "trainer/train/sharded_state.h"

namespace dj {
namespace {

struct Case {
  bool tied, dijiang;
};

class ShardedStateTest : public ::testing::TestWithParam<Case> {};

ModelConfig config_for(const Case& c) {
  ModelConfig config = test::tiny_config(true, "gelu");
  config.tie_word_embeddings = c.tied;
  if (c.dijiang) {
    config.attention = AttentionKind::DiJiang;
    config.dijiang.chunk = 4;
  }
  return config;
}

std::vector<float> random_parameters(const GPTNeoX<float>& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.3f);
  std::vector<float> params(static_cast<size_t>(model.layout().total()));
  for (auto& p : params) p = normal(rng);
  for (const auto& view : model.layout().views())
    if (view.name.ends_with("log_gamma")) {
      const std::vector<double> schedule = reference_log_gamma(view.numel());
      for (int64_t h = 0; h < view.numel(); ++h)
        params[static_cast<size_t>(view.offset + h)] = static_cast<float>(schedule[static_cast<size_t>(h)]);
    }
  return params;
}

TEST_P(ShardedStateTest, EveryStageMatchesTheModelsOwnBuffers) {
  const ModelConfig config = config_for(GetParam());
  const int64_t batch = 2, seq = 7;
  for (const int64_t micro_batches : {int64_t{1}, int64_t{3}}) {
    SCOPED_TRACE(micro_batches);
    std::vector<int32_t> ids(static_cast<size_t>(micro_batches * batch * seq));
    std::mt19937_64 rng(5);
    std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
    for (auto& id : ids) id = token(rng);

    // Reference: the model's own buffers, gradients accumulated over the micro-batches.
    GPTNeoX<float> own(config);
    own.parameters() = random_parameters(own, 11);
    own.zero_gradients();
    std::vector<double> own_losses;
    for (int64_t k = 0; k < micro_batches; ++k) {
      own_losses.push_back(
          own.forward(ids.data() + k * batch * seq, batch, seq, true, 1.0 / static_cast<double>(micro_batches)));
      own.backward();
    }
    const std::vector<float> own_grads = own.gradients();

    comm::SingleCommunicator comm;
    for (int stage = 0; stage <= 3; ++stage) {
      SCOPED_TRACE(stage);
      GPTNeoX<float> model(config);
      ShardedState<CpuOps<float>> state(comm, stage, model.segments());
      EXPECT_EQ(state.total(), model.layout().total());
      model.use_storage(&state);
      EXPECT_THROW(model.parameters(), Error);
      const std::vector<float> params = random_parameters(model, 11);
      state.load([&](const std::string& dataset, int64_t begin, int64_t end, float* out) {
        ASSERT_EQ(dataset, "parameters");
        std::copy(params.begin() + begin, params.begin() + end, out);
      }, false);
      state.start_step();
      for (int64_t k = 0; k < micro_batches; ++k) {
        state.start_micro_batch(k == 0, k + 1 == micro_batches);
        const double loss =
            model.forward(ids.data() + k * batch * seq, batch, seq, true, 1.0 / static_cast<double>(micro_batches));
        EXPECT_EQ(loss, own_losses[static_cast<size_t>(k)]);
        model.backward();
      }
      state.finish_gradients();
      ASSERT_EQ(state.update_count(), state.total());
      const float* grads = state.update_gradients();
      double worst = 0.0, scale = 0.0;
      for (size_t i = 0; i < own_grads.size(); ++i) {
        worst = std::max(worst, std::abs(static_cast<double>(grads[i]) - own_grads[i]));
        scale = std::max(scale, std::abs(static_cast<double>(own_grads[i])));
      }
      // Stages 0-1 accumulate in one buffer exactly as the model does; stages 2-3 add each
      // micro-batch's reduced segment into the slice, which rounds differently.
      if (stage <= 1 || micro_batches == 1)
        EXPECT_EQ(worst, 0.0);
      else
        EXPECT_LE(worst, 1e-6 * scale);
      // The parameters come back from every stage unchanged.
      std::vector<float> owned;
      state.with_owned([&](const float* p, const float*, const float*) { owned.assign(p, p + state.total()); });
      EXPECT_EQ(owned, params);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, ShardedStateTest,
                         ::testing::Values(Case{false, false}, Case{true, false}, Case{false, true}, Case{true, true}),
                         [](const auto& param_info) {
                           return std::string(param_info.param.tied ? "tied" : "untied") +
                                  (param_info.param.dijiang ? "_dijiang" : "_softmax");
                         });

TEST(ShardedState, SlicesAreBalancedWithoutPadding) {
  comm::SingleCommunicator comm;
  ShardedState<CpuOps<float>> state(comm, 1, {{0, 5}, {5, 12}, {12, 13}});
  EXPECT_EQ(state.total(), 13);
  EXPECT_EQ(state.owned_begin(), 0);
  EXPECT_EQ(state.owned_end(), 13);
  EXPECT_THROW(ShardedState<CpuOps<float>>(comm, 4, {{0, 5}}), Error);
}

}  // namespace
}  // namespace dj
