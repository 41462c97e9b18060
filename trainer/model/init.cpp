#include "trainer/model/init.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/core/random.h"
#include "trainer/model/parameters.h"

namespace dj {

namespace {

ModelConfig softmax_of(const ModelConfig& config) {
  ModelConfig c = config;
  c.attention = AttentionKind::Softmax;
  return c;
}

// Fills `t` (F32, tensor `name` of `config`) with its initial values, drawing from `rng`.
void initialise(Tensor& t, const std::string& name, const ModelConfig& config, SplitMix64& rng) {
  const double D = static_cast<double>(config.hidden_size);
  const double small = std::sqrt(2.0 / (5.0 * D));
  const double wang = 2.0 / (static_cast<double>(config.num_layers) * std::sqrt(D));
  float* p = t.data<float>();
  const int64_t n = t.numel();
  const bool norm = name.find("layernorm") != std::string::npos || name.find("layer_norm") != std::string::npos;
  if (norm && name.ends_with(".weight")) {
    std::fill(p, p + n, 1.0f);
  } else if (t.shape().size() >= 2) {
    const bool residual_output = name.ends_with("attention.dense.weight") || name.ends_with("mlp.dense_4h_to_h.weight");
    const double std = residual_output ? wang : small;
    for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(std * rng.normal());
  }  // biases stay 0
}

}  // namespace

TensorMap initial_tensors(const ModelConfig& config, uint64_t seed) {
  SplitMix64 rng(seed);
  TensorMap tensors;
  const ParameterLayout layout = ParameterLayout::gpt_neox(softmax_of(config));
  for (const auto& view : layout.views()) {
    Tensor t(DType::F32, view.shape);
    initialise(t, view.name, config, rng);
    tensors.emplace(view.name, std::move(t));
  }
  return tensors;
}

TensorPlan random_tensor_plan(const ModelConfig& config, uint64_t seed) {
  TensorPlan plan;
  const ParameterLayout layout = ParameterLayout::gpt_neox(softmax_of(config));
  uint64_t index = 0;
  for (const auto& view : layout.views()) {
    const uint64_t stream = SplitMix64(seed ^ (++index * 0x9E3779B97F4A7C15ull)).next();
    plan.emplace(view.name, PlannedTensor{DType::F32, view.shape, [config, name = view.name, shape = view.shape, stream] {
                                            Tensor t(DType::F32, shape);
                                            SplitMix64 rng(stream);
                                            initialise(t, name, config, rng);
                                            return t;
                                          }});
  }
  return plan;
}

}  // namespace dj
