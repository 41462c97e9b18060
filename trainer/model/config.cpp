#include "trainer/model/config.h"

#include <algorithm>
#include <cmath>
#include <iterator>

#include "kernels/core/error.h"

namespace dj {

namespace {

template <typename T>
T field(const nlohmann::json& json, const char* key, const std::string& source, T fallback,
        bool required) {
  auto it = json.find(key);
  if (it == json.end() || it->is_null()) {
    if (required) fail("{}: missing field '{}'", source, key);
    return fallback;
  }
  try {
    if constexpr (std::is_same_v<T, bool>) {
      if (!it->is_boolean()) throw nlohmann::json::type_error::create(302, "not a boolean", nullptr);
    } else if constexpr (std::is_integral_v<T>) {
      if (!it->is_number_integer()) throw nlohmann::json::type_error::create(302, "not an integer", nullptr);
    } else if constexpr (std::is_floating_point_v<T>) {
      if (!it->is_number()) throw nlohmann::json::type_error::create(302, "not a number", nullptr);
    }
    return it->get<T>();
  } catch (const nlohmann::json::exception&) {
    fail("{}: field '{}' has the wrong type ({})", source, key, it->dump());
  }
}

void parse_linear(const nlohmann::json& json, const std::string& source, ModelConfig& c) {
  c.attention = AttentionKind::Linear;
  if (json.contains("dijiang")) fail("{}: 'dijiang' options given but attention_kind is linear", source);
  const nlohmann::json options = json.value("linear_attention", nlohmann::json::object());
  if (!options.is_object()) fail("{}: 'linear_attention' must be an object", source);
  static const char* const kKeys[] = {"feature_map", "seed", "chunk", "form"};
  for (const auto& item : options.items()) {
    const std::string& key = item.key();
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&](const char* k) { return key == k; }) == std::end(kKeys))
      fail("{}: unknown key 'linear_attention.{}'", source, key);
  }
  if (!options.contains("feature_map")) fail("{}: missing field 'linear_attention.feature_map'", source);
  LinearOptions& o = c.linear;
  o.feature_map = parse_choice<cpu::LinearFeatureMap>(field<std::string>(options, "feature_map", source, "", true),
                                                      "linear_attention.feature_map", source);
  o.seed = field<uint64_t>(options, "seed", source, o.seed, false);
  o.chunk = field<int64_t>(options, "chunk", source, o.chunk, false);
  o.form = parse_choice<cpu::DecayForm>(
      field<std::string>(options, "form", source, std::string(choice_name(o.form)), false), "linear_attention.form",
      source);
  if (o.chunk < 1 || o.chunk > 65536) fail("{}: linear_attention.chunk {} is not in 1..65536", source, o.chunk);
}

void parse_attention(const nlohmann::json& json, const std::string& source, ModelConfig& c) {
  const auto kind = field<std::string>(json, "attention_kind", source, "softmax", false);
  if (kind != "linear" && json.contains("linear_attention"))
    fail("{}: 'linear_attention' options given but attention_kind is {}", source, kind);
  if (kind == "softmax") {
    if (json.contains("dijiang")) fail("{}: 'dijiang' options given but attention_kind is softmax", source);
    return;
  }
  if (kind == "linear") return parse_linear(json, source, c);
  if (kind != "dijiang") fail("{}: attention_kind '{}' is not supported (softmax, dijiang or linear)", source, kind);
  c.attention = AttentionKind::DiJiang;
  const nlohmann::json options = json.value("dijiang", nlohmann::json::object());
  if (!options.is_object()) fail("{}: 'dijiang' must be an object", source);
  static const char* const kKeys[] = {"sampling", "projection", "seed", "feature_weights", "learnable_decay",
                                      "group_norm_per_head", "chunk", "form"};
  for (const auto& item : options.items()) {
    const std::string& key = item.key();
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&](const char* k) { return key == k; }) == std::end(kKeys))
      fail("{}: unknown key 'dijiang.{}'", source, key);
  }
  DiJiangOptions& o = c.dijiang;
  o.sampling = parse_choice<FeatureSampling>(
      field<std::string>(options, "sampling", source, std::string(choice_name(o.sampling)), false), "dijiang.sampling",
      source);
  o.projection = parse_choice<FeatureProjection>(
      field<std::string>(options, "projection", source, std::string(choice_name(o.projection)), false),
      "dijiang.projection", source);
  o.seed = field<uint64_t>(options, "seed", source, o.seed, false);
  o.feature_weights = field<bool>(options, "feature_weights", source, o.feature_weights, false);
  o.learnable_decay = field<bool>(options, "learnable_decay", source, o.learnable_decay, false);
  o.group_norm_per_head = field<bool>(options, "group_norm_per_head", source, o.group_norm_per_head, false);
  o.chunk = field<int64_t>(options, "chunk", source, o.chunk, false);
  o.form = parse_choice<cpu::DecayForm>(
      field<std::string>(options, "form", source, std::string(choice_name(o.form)), false), "dijiang.form", source);
  if (o.chunk < 1 || o.chunk > 65536) fail("{}: dijiang.chunk {} is not in 1..65536", source, o.chunk);
}

}  // namespace

int64_t ModelConfig::rotary_dims() const {
  return static_cast<int64_t>(static_cast<double>(head_dim()) * rotary_pct);
}

std::string ModelConfig::attention_name() const {
  switch (attention) {
    case AttentionKind::Softmax: return "softmax";
    case AttentionKind::DiJiang: return has_feature_map() ? "DiJiang" : "RetNet-style";
    case AttentionKind::Linear: return std::string(choice_name(linear.feature_map));
  }
  return "?";
}

cpu::GeluKind ModelConfig::gelu_kind() const {
  return hidden_act == "gelu" ? cpu::GeluKind::Erf : cpu::GeluKind::Tanh;
}

int64_t ModelConfig::parameter_count() const {
  const int64_t D = hidden_size, F = intermediate_size, bias = attention_bias ? 1 : 0;
  int64_t per_layer = 4 * D                      // two LayerNorms
                      + 3 * D * D + 3 * D * bias  // query_key_value
                      + D * D + D * bias          // dense
                      + D * F + F + F * D + D;    // MLP
  if (is_dijiang()) {
    const int64_t d = head_dim(), H = num_heads;
    per_layer += (has_feature_map() ? d * d : 0) + D * D + 2 * D + H + (dijiang.feature_weights ? H * d : 0);
  }
  if (is_linear() && linear.feature_map == cpu::LinearFeatureMap::Performer) per_layer += head_dim() * head_dim();
  return vocab_size * D * (tie_word_embeddings ? 1 : 2) + num_layers * per_layer + 2 * D;
}

ModelConfig ModelConfig::from_hf_json(const nlohmann::json& json, const std::string& source) {
  if (!json.is_object()) fail("{}: expected a JSON object", source);
  const auto model_type = field<std::string>(json, "model_type", source, "gpt_neox", false);
  if (model_type != "gpt_neox") fail("{}: model_type '{}' is not supported (expected gpt_neox)", source, model_type);
  if (json.contains("rope_scaling") && !json["rope_scaling"].is_null())
    fail("{}: rope_scaling is not supported", source);

  ModelConfig c;
  c.vocab_size = field<int64_t>(json, "vocab_size", source, 0, true);
  c.hidden_size = field<int64_t>(json, "hidden_size", source, 0, true);
  c.num_layers = field<int64_t>(json, "num_hidden_layers", source, 0, true);
  c.num_heads = field<int64_t>(json, "num_attention_heads", source, 0, true);
  c.intermediate_size = field<int64_t>(json, "intermediate_size", source, 4 * c.hidden_size, false);
  c.max_position_embeddings = field<int64_t>(json, "max_position_embeddings", source, 2048, false);
  // transformers 5 writes the rotary settings as rope_parameters; older files as top-level keys.
  double rope_fraction = 0.25, rope_theta = 10000.0;
  if (json.contains("rope_parameters") && !json["rope_parameters"].is_null()) {
    const nlohmann::json& rope = json["rope_parameters"];
    if (!rope.is_object()) fail("{}: rope_parameters must be an object", source);
    const auto rope_type = field<std::string>(rope, "rope_type", source, "default", false);
    if (rope_type != "default") fail("{}: rope_parameters.rope_type '{}' is not supported", source, rope_type);
    rope_fraction = field<double>(rope, "partial_rotary_factor", source, rope_fraction, false);
    rope_theta = field<double>(rope, "rope_theta", source, rope_theta, false);
  }
  c.rotary_pct = field<double>(json, "rotary_pct", source, rope_fraction, false);
  c.rotary_emb_base = field<double>(json, "rotary_emb_base", source, rope_theta, false);
  if (json.contains("rope_parameters") && json["rope_parameters"].is_object() &&
      (c.rotary_pct != rope_fraction || c.rotary_emb_base != rope_theta))
    fail("{}: rotary_pct/rotary_emb_base disagree with rope_parameters", source);
  c.layer_norm_eps = field<double>(json, "layer_norm_eps", source, 1e-5, false);
  c.use_parallel_residual = field<bool>(json, "use_parallel_residual", source, true, false);
  c.tie_word_embeddings = field<bool>(json, "tie_word_embeddings", source, false, false);
  c.attention_bias = field<bool>(json, "attention_bias", source, true, false);
  c.hidden_act = field<std::string>(json, "hidden_act", source, "gelu", false);

  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.intermediate_size <= 0 || c.max_position_embeddings <= 0)
    fail("{}: sizes must be positive", source);
  // Each size must fit the kernels' 32-bit shapes, and the parameter count (computed here in double,
  // so that a hostile file cannot overflow it) must stay far inside int64.
  constexpr int64_t kMaxSize = int64_t{1} << 31;
  if (c.vocab_size >= kMaxSize || c.hidden_size >= kMaxSize || c.num_layers >= kMaxSize ||
      c.num_heads >= kMaxSize || c.intermediate_size >= kMaxSize || c.max_position_embeddings >= kMaxSize)
    fail("{}: sizes must be below 2^31", source);
  {
    const double D = static_cast<double>(c.hidden_size), F = static_cast<double>(c.intermediate_size);
    const double per_layer = 6.0 * D * D + 2.0 * D * F + 16.0 * D + F;  // attention and conversion included
    const double total = static_cast<double>(c.vocab_size) * D * 2.0 + static_cast<double>(c.num_layers) * per_layer;
    if (total > 0x1p50)
      fail("{}: these sizes give about {:.3g} parameters, more than this program can address", source, total);
  }
  if (c.hidden_size % c.num_heads != 0)
    fail("{}: hidden_size {} is not divisible by num_attention_heads {}", source, c.hidden_size, c.num_heads);
  if (!(c.rotary_pct >= 0.0 && c.rotary_pct <= 1.0)) fail("{}: rotary_pct must lie in [0, 1]", source);
  if (c.rotary_dims() % 2 != 0)
    fail("{}: rotary dimensions int(head_dim * rotary_pct) = {} must be even", source, c.rotary_dims());
  if (!(c.rotary_emb_base > 0.0)) fail("{}: rotary_emb_base must be positive", source);
  if (!(c.layer_norm_eps > 0.0)) fail("{}: layer_norm_eps must be positive", source);
  if (c.hidden_act != "gelu" && c.hidden_act != "gelu_new" && c.hidden_act != "gelu_fast" &&
      c.hidden_act != "gelu_pytorch_tanh")
    fail("{}: hidden_act '{}' is not supported (gelu, gelu_new, gelu_fast, gelu_pytorch_tanh)",
         source, c.hidden_act);
  parse_attention(json, source, c);
  return c;
}

nlohmann::json ModelConfig::to_hf_json(const nlohmann::json& base, const std::string& torch_dtype) const {
  nlohmann::json j = base.is_object() ? base : nlohmann::json::object();
  j["architectures"] = {"GPTNeoXForCausalLM"};
  j["model_type"] = "gpt_neox";
  j["vocab_size"] = vocab_size;
  j["hidden_size"] = hidden_size;
  j["num_hidden_layers"] = num_layers;
  j["num_attention_heads"] = num_heads;
  j["intermediate_size"] = intermediate_size;
  j["max_position_embeddings"] = max_position_embeddings;
  j["rotary_pct"] = rotary_pct;
  j["rotary_emb_base"] = rotary_emb_base;
  j["layer_norm_eps"] = layer_norm_eps;
  j["use_parallel_residual"] = use_parallel_residual;
  j["tie_word_embeddings"] = tie_word_embeddings;
  j["attention_bias"] = attention_bias;
  j["hidden_act"] = hidden_act;
  j["torch_dtype"] = torch_dtype;
  j.erase("attention_kind");
  j.erase("dijiang");
  j.erase("linear_attention");
  if (is_linear()) {
    j["attention_kind"] = "linear";
    j["linear_attention"] = {{"feature_map", choice_name(linear.feature_map)},
                             {"seed", linear.seed},
                             {"chunk", linear.chunk},
                             {"form", choice_name(linear.form)}};
  }
  if (is_dijiang()) {
    j["attention_kind"] = "dijiang";
    j["dijiang"] = {{"sampling", choice_name(dijiang.sampling)},
                    {"seed", dijiang.seed},
                    {"feature_weights", dijiang.feature_weights},
                    {"learnable_decay", dijiang.learnable_decay},
                    {"group_norm_per_head", dijiang.group_norm_per_head},
                    {"chunk", dijiang.chunk},
                    {"form", choice_name(dijiang.form)}};
    // Written only for the variants, so that a DiJiang model's config.json is what it always was.
    if (dijiang.projection != FeatureProjection::DCT) j["dijiang"]["projection"] = choice_name(dijiang.projection);
  }
  if (!j.contains("bos_token_id")) j["bos_token_id"] = 0;
  if (!j.contains("eos_token_id")) j["eos_token_id"] = 0;
  return j;
}

}  // namespace dj
