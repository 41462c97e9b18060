#include "trainer/model/init.h"

#include <cmath>
#include <numbers>

#include "trainer/model/parameters.h"

namespace dj {

namespace {

// SplitMix64 and Box-Muller: fixed by definition, unlike the standard library's distributions.
class Normal {
 public:
  explicit Normal(uint64_t seed) : state_(seed) {}
  double operator()() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>(next() >> 11) + 0.5) * 0x1p-53;
    const double u2 = static_cast<double>(next() >> 11) * 0x1p-53;
    const double radius = std::sqrt(-2.0 * std::log(u1));
    spare_ = radius * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return radius * std::cos(2.0 * std::numbers::pi * u2);
  }

 private:
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace

TensorMap initial_tensors(const ModelConfig& config, uint64_t seed) {
  const ModelConfig softmax = [&] {
    ModelConfig c = config;
    c.attention = AttentionKind::Softmax;
    return c;
  }();
  const double D = static_cast<double>(config.hidden_size);
  const double small = std::sqrt(2.0 / (5.0 * D));
  const double wang = 2.0 / (static_cast<double>(config.num_layers) * std::sqrt(D));
  Normal normal(seed);
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
      for (int64_t i = 0; i < view.numel(); ++i) p[i] = static_cast<float>(std * normal());
    }  // biases stay 0
    tensors.emplace(name, std::move(t));
  }
  return tensors;
}

}  // namespace dj
