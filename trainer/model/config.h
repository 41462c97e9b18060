// The GPT-NeoX model configuration: every config.json field Pythia uses.
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/cpu/gelu.h"
#include "kernels/cpu/linear_attention.h"
#include "trainer/config/choices.h"

namespace dj {

// softmax (the source's), dijiang (DiJiang or one of its variants: decayed attention, GroupNorm and
// gate) or linear (a normalised linear-attention baseline: features, no decay, no gate).
enum class AttentionKind { Softmax, DiJiang, Linear };

// DiJiang attention options (docs/method.md). Stored in config.json as the object
// "dijiang" beside "attention_kind": "dijiang".
struct DiJiangOptions {
  FeatureSampling sampling = FeatureSampling::QMC;  // qmc (stratified, the paper's intent) or mc (the reference code's)
  // dct (DiJiang), gaussian (the ablation without the DCT) or none (RetNet-style retention: q and k
  // enter the decayed attention as they are).
  FeatureProjection projection = FeatureProjection::DCT;
  uint64_t seed = 0;             // seeds the sampling of t and the W_G initialisation
  bool feature_weights = false;  // learned per-head weights on the features (the paper's D)
  bool learnable_decay = false;  // train log γ (frozen by default)
  bool group_norm_per_head = false;  // GroupNorm over H groups instead of the reference's d groups
  int64_t chunk = 64;            // block size of the chunkwise form
  cpu::DecayForm form = cpu::DecayForm::Chunkwise;  // parallel, chunkwise or recurrent: the same function
};

// The normalised linear-attention baselines (docs/method.md, section 8). Stored in config.json as the
// object "linear_attention" beside "attention_kind": "linear".
struct LinearOptions {
  cpu::LinearFeatureMap feature_map = cpu::LinearFeatureMap::Elu;  // performer, cosformer or elu
  uint64_t seed = 0;   // seeds the performer's random features
  int64_t chunk = 64;  // block size of the chunkwise form
  cpu::DecayForm form = cpu::DecayForm::Chunkwise;
};

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
  AttentionKind attention = AttentionKind::Softmax;
  DiJiangOptions dijiang;
  LinearOptions linear;

  int64_t head_dim() const { return hidden_size / num_heads; }
  // int(head_dim * rotary_pct), as the Hugging Face model computes it.
  int64_t rotary_dims() const;
  cpu::GeluKind gelu_kind() const;
  int64_t parameter_count() const;
  // DiJiang attention or one of its variants (model.dijiang.projection): decayed linear attention,
  // GroupNorm and gate.
  bool is_dijiang() const { return attention == AttentionKind::DiJiang; }
  // Whether the decayed attention reads features softmax(x · P) (the layers hold proj_matrix).
  bool has_feature_map() const { return is_dijiang() && dijiang.projection != FeatureProjection::None; }
  // A normalised linear-attention baseline (model.attention performer, cosformer or elu).
  bool is_linear() const { return attention == AttentionKind::Linear; }
  // Any attention a conversion made: linear in the sequence length, with a recurrent state.
  bool is_converted() const { return attention != AttentionKind::Softmax; }
  // Features per head of a baseline's feature map (m).
  int64_t linear_features() const { return cpu::linear_feature_count(linear.feature_map, head_dim()); }
  // The chunk and form of the converted attention's decayed-attention kernels.
  int64_t attention_chunk() const { return is_linear() ? linear.chunk : dijiang.chunk; }
  cpu::DecayForm attention_form() const { return is_linear() ? linear.form : dijiang.form; }
  // "softmax", "DiJiang", "RetNet-style", "performer", "cosformer" or "elu": for messages and logs.
  std::string attention_name() const;
  int64_t group_norm_groups() const { return dijiang.group_norm_per_head ? num_heads : head_dim(); }

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
