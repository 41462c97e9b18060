// Shared pieces of the model-level tests: a tiny config and an fp64 finite-difference check of
// the whole model's loss gradient.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "fixture_paths.h"
#include "gradcheck.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/gpt_neox.h"

namespace dj::test {

// A small model with every feature on, in fp64: the analytic gradient of the loss against central
// differences for a sample of components of every parameter tensor.
inline ModelConfig tiny_config(bool parallel, const std::string& act) {
  ModelConfig c;
  c.vocab_size = 23;
  c.hidden_size = 12;
  c.num_layers = 2;
  c.num_heads = 3;
  c.intermediate_size = 20;
  c.rotary_pct = 0.5;
  c.rotary_emb_base = 100.0;
  c.use_parallel_residual = parallel;
  c.hidden_act = act;
  return c;
}

inline void finite_difference_check(const ModelConfig& config) {
  GPTNeoX<double> model(config);
  std::mt19937_64 rng(7);
  std::normal_distribution<double> normal(0.0, 0.3);
  for (auto& p : model.parameters()) p = normal(rng);
  // DiJiang decay must stay below 1: start from the reference schedule, perturbed.
  for (const auto& view : model.layout().views())
    if (view.name.ends_with("log_gamma")) {
      const std::vector<double> schedule = reference_log_gamma(view.numel());
      for (int64_t h = 0; h < view.numel(); ++h)
        model.parameters()[static_cast<size_t>(view.offset + h)] = schedule[static_cast<size_t>(h)] * (1.0 + 0.5 * std::abs(normal(rng)));
    }
  const int64_t batch = 2, seq = 9;
  std::vector<int32_t> ids(static_cast<size_t>(batch * seq));
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  for (auto& id : ids) id = token(rng);

  model.zero_gradients();
  model.forward(ids.data(), batch, seq);
  model.backward();
  const std::vector<double> analytic = model.gradients();

  test::GradCheckOptions options;
  options.eps = 1e-5;  // the loss sums many terms: a larger step keeps rounding noise under 1e-10
  for (const auto& view : model.layout().views()) {
    if (!view.trainable) continue;  // fixed tensors get no gradient by design
    std::uniform_int_distribution<int64_t> pick(0, view.numel() - 1);
    for (int i = 0; i < 6; ++i) options.indices.push_back(static_cast<size_t>(view.offset + pick(rng)));
  }
  std::vector<double> x = model.parameters();
  const auto loss = [&](std::vector<double>& params) {
    model.parameters() = params;
    return model.forward(ids.data(), batch, seq);
  };
  const test::GradCheckResult r = test::gradcheck(loss, x, analytic, options);
  EXPECT_LE(r.max_error, 1e-6) << r;
  // Fixed tensors must not receive a gradient.
  for (const auto& view : model.layout().views()) {
    if (view.trainable) continue;
    for (int64_t i = 0; i < view.numel(); ++i) {
      ASSERT_EQ(analytic[static_cast<size_t>(view.offset + i)], 0.0) << view.name;
    }
  }
}

// The loss and gradients of `config` (a converted config; DiJiang's with learnable decay and feature
// weights set here) in its three attention forms, fp64: parallel is the reference, chunkwise and recurrent
// must agree with it to 1e-12 in the loss and 1e-10 in the gradients.
inline void three_forms_agree(ModelConfig config) {
  if (config.is_dijiang()) {
    config.dijiang.learnable_decay = true;
    config.dijiang.feature_weights = true;
  }
  std::vector<double> reference_grads;
  double reference_loss = 0.0;
  for (const cpu::DecayForm form : {cpu::DecayForm::Parallel, cpu::DecayForm::Chunkwise, cpu::DecayForm::Recurrent}) {
    SCOPED_TRACE(std::string(choice_name(form)));
    config.dijiang.form = form;
    config.linear.form = form;
    GPTNeoX<double> model(config);
    std::mt19937_64 rng(11);
    std::normal_distribution<double> normal(0.0, 0.3);
    for (auto& p : model.parameters()) p = normal(rng);
    for (int64_t l = 0; l < config.num_layers && config.is_dijiang(); ++l) {
      const std::vector<double> schedule = reference_log_gamma(config.num_heads);
      std::copy(schedule.begin(), schedule.end(),
                model.parameters().begin() + model.layout().view(layer_prefix(l) + "attention.log_gamma").offset);
    }
    std::vector<int32_t> ids(3 * 13);
    for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>((i * 7 + 3) % 23);
    model.zero_gradients();
    const double loss = model.forward(ids.data(), 3, 13);
    model.backward();
    if (reference_grads.empty()) {
      reference_loss = loss;
      reference_grads = model.gradients();
      continue;
    }
    EXPECT_LE(std::abs(loss - reference_loss) / reference_loss, 1e-12);
    EXPECT_LE(relative_error(model.gradients(), reference_grads), 1e-10);
  }
}

}  // namespace dj::test
