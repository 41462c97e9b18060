// The GPT-NeoX model configuration: every config.json field Pythia uses.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/cpu/gelu.h"

namespace dj {

struct ModelConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t intermediate_size = 0;
  int64_t max_position_embeddings = 2048;
  double rotary_pct = 0.25;
  double rotary_emb_base = 10000.0;
  double layer_norm_eps = 1e-5;
  bool use_parallel_residual = true;
  bool tie_word_embeddings = false;
  bool attention_bias = true;
  std::string hidden_act = "gelu";

  int64_t head_dim() const { return hidden_size / num_heads; }
  // int(head_dim * rotary_pct), as the Hugging Face model computes it.
  int64_t rotary_dims() const;
  cpu::GeluKind gelu_kind() const;
  int64_t parameter_count() const;

  // Parses a Hugging Face GPT-NeoX config.json. Fields that change the computation and are not
  // supported (rope_scaling, a non-GPT-NeoX model_type, an unknown activation) are refused;
  // `source` names the file in error messages.
  static ModelConfig from_hf_json(const nlohmann::json& json, const std::string& source);
  // The config.json a Hugging Face GPTNeoXForCausalLM loads; `base` (optional) supplies fields to
  // keep, such as token ids and dropout settings.
  nlohmann::json to_hf_json(const nlohmann::json& base = nlohmann::json::object(),
                            const std::string& torch_dtype = "float32") const;
};

}  // namespace dj
