#include "trainer/model/init.h"

#include <cmath>

#include "kernels/core/random.h"
#include "trainer/model/parameters.h"

namespace dj {

TensorMap initial_tensors(const ModelConfig& config, uint64_t seed) {
  const ModelConfig softmax = [&] {
    ModelConfig c = config;
    c.attention = AttentionKind::Softmax;
    return c;
  }();
  const double D = static_cast<double>(config.hidden_size);
  const double small = std::sqrt(2.0 / (5.0 * D));
  const double wang = 2.0 / (static_cast<double>(config.num_layers) * std::sqrt(D));
  SplitMix64 rng(seed);
  TensorMap tensors;
  const ParameterLayout layout = ParameterLayout::gpt_neox(softmax);
  for (const auto& view : layout.views()) {
    Tensor t(DType::F32, view.shape);
    float* p = t.data<float>();
    const std::string& name = view.name;
    const bool norm = name.find("layernorm") != std::string::npos || name.find("layer_norm") != std::string::npos;
    if (norm && name.ends_with(".weight")) {
      std::fill(p, p + view.numel(), 1.0f);
    } else if (view.shape.size() >= 2) {
      const bool residual_output = name.ends_with("attention.dense.weight") || name.ends_with("mlp.dense_4h_to_h.weight");
      const double std = residual_output ? wang : small;
      for (int64_t i = 0; i < view.numel(); ++i) p[i] = static_cast<float>(std * rng.normal());
    }  // biases stay 0
    tensors.emplace(name, std::move(t));
  }
  return tensors;
}

}  // namespace dj
