// Incremental decoding against the full forward pass: greedy decoding equals the argmax of the
// whole sequence recomputed at every step (DiJiang: in its parallel form), the DiJiang state after
// a chunkwise prefill equals the one built by recurrent steps, forked states continue exactly as
// fresh runs; and the sampler's rules and reproducibility.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "model_test_support.h"
#include "trainer/model/decoder.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/sampling.h"

namespace dj {
namespace {

struct Case {
  std::string name;
  ModelConfig config;
};

std::vector<Case> cases() {
  std::vector<Case> out;
  out.push_back({"softmax_parallel", test::tiny_config(true, "gelu")});
  ModelConfig sequential = test::tiny_config(false, "gelu_new");
  sequential.tie_word_embeddings = true;
  sequential.attention_bias = false;
  out.push_back({"softmax_sequential_tied", sequential});
  for (const std::string form : {"chunkwise", "parallel", "recurrent"}) {
    ModelConfig c = test::tiny_config(true, "gelu");
    c.attention = AttentionKind::DiJiang;
    c.dijiang.form = parse_choice<cpu::DecayForm>(form, "form", "test");
    c.dijiang.chunk = 4;  // prompts of 7 tokens: a full chunk and a short one
    out.push_back({"dijiang_" + form, c});
  }
  for (const FeatureProjection projection : {FeatureProjection::Gaussian, FeatureProjection::None}) {
    ModelConfig c = test::tiny_config(true, "gelu");
    c.attention = AttentionKind::DiJiang;
    c.dijiang.projection = projection;
    c.dijiang.chunk = 4;
    out.push_back({"dijiang_projection_" + std::string(choice_name(projection)), c});
  }
  for (const cpu::LinearFeatureMap map :
       {cpu::LinearFeatureMap::Performer, cpu::LinearFeatureMap::CosFormer, cpu::LinearFeatureMap::Elu}) {
    ModelConfig c = test::tiny_config(true, "gelu");
    c.attention = AttentionKind::Linear;
    c.linear.feature_map = map;
    c.linear.chunk = 4;
    c.max_position_embeddings = 24;  // cosformer: angles far apart within 17 positions
    out.push_back({"linear_" + std::string(choice_name(map)), c});
  }
  ModelConfig every = test::tiny_config(false, "gelu");
  every.attention = AttentionKind::DiJiang;
  every.dijiang.chunk = 3;
  every.dijiang.feature_weights = true;
  every.dijiang.learnable_decay = true;
  every.dijiang.group_norm_per_head = true;
  every.tie_word_embeddings = true;
  out.push_back({"dijiang_every_option", every});
  return out;
}

// Random parameters (DiJiang's decay from the reference schedule, perturbed below 1).
std::vector<double> random_parameters(const GPTNeoX<double>& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 0.4);
  std::vector<double> p(model.parameters().size());
  for (auto& v : p) v = normal(rng);
  for (const auto& view : model.layout().views())
    if (view.name.ends_with("log_gamma")) {
      const std::vector<double> schedule = reference_log_gamma(view.numel());
      for (int64_t h = 0; h < view.numel(); ++h)
        p[static_cast<size_t>(view.offset + h)] = schedule[static_cast<size_t>(h)] * (1.0 + 0.5 * std::abs(normal(rng)));
    }
  return p;
}

ModelSource source_of(const ModelConfig& config, const std::vector<double>& parameters) {
  GPTNeoX<double> model(config);
  model.parameters() = parameters;
  ModelSource source;
  source.config = config;
  source.path = "random model";
  source.tensors = model.to_tensors(DType::F64);
  return source;
}

// The reference: the full forward of each sequence [batch, len], DiJiang in its parallel form;
// returns the logits of every sequence's last position.
std::vector<double> full_forward_last_logits(GPTNeoX<double>& model, const std::vector<std::vector<int32_t>>& seqs) {
  const auto batch = static_cast<int64_t>(seqs.size());
  const auto len = static_cast<int64_t>(seqs[0].size());
  std::vector<int32_t> ids;
  for (const auto& s : seqs) ids.insert(ids.end(), s.begin(), s.end());
  model.forward(ids.data(), batch, len);
  const int64_t V = model.config().vocab_size;
  std::vector<double> last(static_cast<size_t>(batch * V));
  for (int64_t b = 0; b < batch; ++b)
    std::copy_n(model.logits().begin() + (b * len + len - 1) * V, V, last.begin() + b * V);
  return last;
}

int32_t argmax(const double* x, int64_t n) { return static_cast<int32_t>(std::max_element(x, x + n) - x); }

TEST(Decoding, GreedyEqualsTheArgmaxOfTheFullForwardAtEveryStep) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    GPTNeoX<double> probe(c.config);
    const std::vector<double> params = random_parameters(probe, 5);
    ModelConfig reference_config = c.config;
    if (reference_config.is_dijiang()) reference_config.dijiang.form = cpu::DecayForm::Parallel;
    if (reference_config.is_linear()) reference_config.linear.form = cpu::DecayForm::Parallel;
    GPTNeoX<double> reference(reference_config);
    reference.parameters() = params;
    ModelSource source = source_of(c.config, params);
    ModelDecoder<CpuOps<double>> decoder(source);
    const int64_t V = c.config.vocab_size, batch = 2, steps = 10;
    std::vector<std::vector<int32_t>> seqs = {{3, 1, 4, 1, 5, 9, 2}, {2, 7, 1, 8, 2, 8, 1}};
    auto sequences = decoder.start(batch, 7 + steps);
    std::vector<int32_t> ids;
    for (const auto& s : seqs) ids.insert(ids.end(), s.begin(), s.end());
    std::vector<double> logits = sequences->feed(ids.data(), 7);
    for (int64_t step = 0; step < steps; ++step) {
      const std::vector<double> expected = full_forward_last_logits(reference, seqs);
      double max_error = 0.0, max_value = 0.0;
      for (size_t i = 0; i < expected.size(); ++i) {
        max_error = std::max(max_error, std::abs(logits[i] - expected[i]));
        max_value = std::max(max_value, std::abs(expected[i]));
      }
      ASSERT_LE(max_error, 1e-10 * std::max(1.0, max_value)) << "step " << step;
      std::vector<int32_t> next(static_cast<size_t>(batch));
      for (int64_t b = 0; b < batch; ++b) {
        next[static_cast<size_t>(b)] = argmax(logits.data() + b * V, V);
        ASSERT_EQ(next[static_cast<size_t>(b)], argmax(expected.data() + b * V, V));
        seqs[static_cast<size_t>(b)].push_back(next[static_cast<size_t>(b)]);
      }
      logits = sequences->feed(next.data(), 1);
    }
    EXPECT_EQ(sequences->position(), 7 + steps);
  }
}

TEST(Decoding, DiJiangPrefillStateEqualsRecurrentSteps) {
  for (const Case& c : cases()) {
    if (!c.config.is_converted()) continue;
    SCOPED_TRACE(c.name);
    GPTNeoX<double> model(c.config);
    model.parameters() = random_parameters(model, 9);
    model.parameters_changed();
    const std::vector<int32_t> ids = {4, 8, 15, 16, 23 % 23, 11, 2, 19, 7, 3, 6};
    const auto n = static_cast<int64_t>(ids.size());
    auto prefilled = model.start_decoding(1, n);
    auto stepped = model.start_decoding(1, n);
    std::vector<double> prefill_logits, step_logits;
    model.decode(prefilled, ids.data(), n, prefill_logits);
    for (int64_t t = 0; t < n; ++t) model.decode(stepped, ids.data() + t, 1, step_logits);
    ASSERT_EQ(prefilled.states.size(), static_cast<size_t>(c.config.num_layers));
    for (size_t l = 0; l < prefilled.states.size(); ++l)
      for (size_t i = 0; i < prefilled.states[l].size(); ++i)
        ASSERT_NEAR(prefilled.states[l][i], stepped.states[l][i], 1e-12 * std::max(1.0, std::abs(stepped.states[l][i])))
            << "layer " << l << " value " << i;
    for (size_t i = 0; i < prefill_logits.size(); ++i) ASSERT_NEAR(prefill_logits[i], step_logits[i], 1e-10);
    // O(1) in the sequence length: the state is [H, d, d] per layer (a baseline's [H, m, d + 1]),
    // whatever n.
    const int64_t d = c.config.head_dim();
    const int64_t per_head = c.config.is_linear() ? c.config.linear_features() * (d + 1) : d * d;
    EXPECT_EQ(prefilled.bytes(),
              static_cast<int64_t>(c.config.num_layers * c.config.num_heads * per_head * sizeof(double)));
  }
}

TEST(Decoding, ForkedStatesContinueAsFreshRuns) {
  for (const Case& c : cases()) {
    SCOPED_TRACE(c.name);
    GPTNeoX<double> probe(c.config);
    const std::vector<double> params = random_parameters(probe, 13);
    ModelSource source = source_of(c.config, params);
    ModelDecoder<CpuOps<double>> decoder(source);
    const std::vector<int32_t> context = {5, 3, 12, 0, 7, 7};
    const std::vector<std::vector<int32_t>> continuations = {{1, 2, 3}, {9}, {22, 4}};
    auto shared = decoder.start(1, 12);
    shared->feed(context.data(), static_cast<int64_t>(context.size()));
    for (const auto& cont : continuations) {
      auto forked = shared->fork();
      const std::vector<double> got = forked->feed(cont.data(), static_cast<int64_t>(cont.size()));
      auto fresh = decoder.start(1, 12);
      std::vector<int32_t> whole = context;
      whole.insert(whole.end(), cont.begin(), cont.end());
      const std::vector<double> expected = fresh->feed(whole.data(), static_cast<int64_t>(whole.size()));
      ASSERT_EQ(got.size(), expected.size());
      for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], expected[i], 1e-10);
    }
    EXPECT_EQ(shared->position(), static_cast<int64_t>(context.size()));
  }
}

TEST(Decoding, RefusesAFullCacheAndBadInput) {
  ModelConfig c = test::tiny_config(true, "gelu");
  GPTNeoX<double> model(c);
  auto state = model.start_decoding(1, 4);
  std::vector<double> logits;
  const std::vector<int32_t> ids = {1, 2, 3, 4, 5};
  EXPECT_THROW(model.decode(state, ids.data(), 5, logits), Error);
  model.decode(state, ids.data(), 4, logits);
  EXPECT_THROW(model.decode(state, ids.data(), 1, logits), Error);
  auto fresh = model.start_decoding(1, 4);
  const int32_t bad = static_cast<int32_t>(c.vocab_size);
  EXPECT_THROW(model.decode(fresh, &bad, 1, logits), Error);
  EXPECT_THROW(model.start_decoding(0, 4), Error);
}

TEST(Sampling, GreedyTakesTheFirstLargest) {
  Sampler greedy(SamplingOptions{});
  const std::vector<double> logits = {0.5, 2.0, -1.0, 2.0};
  EXPECT_EQ(greedy.next(logits.data(), 4), 1);
}

TEST(Sampling, FollowsTheTemperatureTopKAndTopP) {
  const std::vector<double> logits = {std::log(0.5), std::log(0.3), std::log(0.15), std::log(0.05)};
  const auto frequencies = [&](SamplingOptions o) {
    Sampler s(o);
    std::vector<double> f(4, 0.0);
    const int n = 40000;
    for (int i = 0; i < n; ++i) f[static_cast<size_t>(s.next(logits.data(), 4))] += 1.0 / n;
    return f;
  };
  SamplingOptions o;
  o.greedy = false;
  o.seed = 3;
  std::vector<double> f = frequencies(o);
  const std::vector<double> p = {0.5, 0.3, 0.15, 0.05};
  for (size_t i = 0; i < 4; ++i) EXPECT_NEAR(f[i], p[i], 0.01) << i;
  o.temperature = 0.5;  // p_i ∝ p_i^2
  f = frequencies(o);
  const double z = 0.25 + 0.09 + 0.0225 + 0.0025;
  EXPECT_NEAR(f[0], 0.25 / z, 0.01);
  EXPECT_NEAR(f[3], 0.0025 / z, 0.003);
  o.temperature = 1.0;
  o.top_k = 2;
  f = frequencies(o);
  EXPECT_NEAR(f[0], 0.5 / 0.8, 0.01);
  EXPECT_EQ(f[2] + f[3], 0.0);
  o.top_k = 0;
  o.top_p = 0.75;  // 0.5 + 0.3 reaches it
  f = frequencies(o);
  EXPECT_NEAR(f[1], 0.3 / 0.8, 0.01);
  EXPECT_EQ(f[2] + f[3], 0.0);
  o.top_p = 0.1;  // the top token alone
  f = frequencies(o);
  EXPECT_EQ(f[1] + f[2] + f[3], 0.0);
}

TEST(Sampling, ASeedGivesTheSameDrawsTwice) {
  std::vector<double> logits(50);
  for (size_t i = 0; i < logits.size(); ++i) logits[i] = std::sin(static_cast<double>(i));
  SamplingOptions o;
  o.greedy = false;
  o.temperature = 0.8;
  o.top_k = 20;
  o.top_p = 0.9;
  o.seed = 42;
  Sampler a(o), b(o);
  o.seed = 43;
  Sampler c(o);
  int differ = 0;
  for (int i = 0; i < 100; ++i) {
    const int32_t x = a.next(logits.data(), 50);
    ASSERT_EQ(x, b.next(logits.data(), 50));
    differ += x != c.next(logits.data(), 50);
  }
  EXPECT_GT(differ, 0);
}

TEST(Sampling, RefusesBadOptions) {
  SamplingOptions o;
  o.greedy = false;
  o.temperature = 0.0;
  EXPECT_THROW(Sampler{o}, Error);
  o.temperature = 1.0;
  o.top_p = 1.5;
  EXPECT_THROW(Sampler{o}, Error);
  o.top_p = 1.0;
  o.top_k = -1;
  EXPECT_THROW(Sampler{o}, Error);
}

}  // namespace
}  // namespace dj
