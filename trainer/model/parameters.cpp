#include "trainer/model/parameters.h"

#include <algorithm>
#include <cstring>

#include "kernels/core/error.h"

namespace dj {

std::string layer_prefix(int64_t layer) { return fmt::format("gpt_neox.layers.{}.", layer); }

bool added_by_conversion(const std::string& name) {
  if (!name.starts_with("gpt_neox.layers.")) return false;
  for (const char* suffix : {".attention.proj_matrix", ".attention.W_G", ".attention.group_norm.weight",
                             ".attention.group_norm.bias", ".attention.log_gamma", ".attention.feature_weights"})
    if (name.ends_with(suffix)) return true;
  return false;
}

void ParameterLayout::add(const std::string& name, Shape shape, bool trainable) {
  if (contains(name)) fail("parameter '{}' declared twice", name);
  index_[name] = views_.size();
  views_.push_back({name, total_, shape, trainable});
  total_ += shape_numel(shape);
}

const ParameterView& ParameterLayout::view(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail("no parameter named '{}'", name);
  return views_[it->second];
}

std::vector<ParameterSegment> gpt_neox_segments(const ParameterLayout& layout, const ModelConfig& config) {
  std::vector<ParameterSegment> segments;
  const ParameterView& embed = layout.view("gpt_neox.embed_in.weight");
  segments.push_back({embed.offset, embed.offset + embed.numel()});
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const std::string prefix = layer_prefix(l);
    ParameterSegment s{layout.total(), 0};
    for (const auto& view : layout.views())
      if (view.name.starts_with(prefix)) {
        s.begin = std::min(s.begin, view.offset);
        s.end = std::max(s.end, view.offset + view.numel());
      }
    segments.push_back(s);
  }
  segments.push_back({segments.back().end, layout.total()});
  for (size_t i = 1; i < segments.size(); ++i)
    if (segments[i].begin != segments[i - 1].end) fail("parameter layout: segment {} is not contiguous", i);
  if (segments.front().begin != 0) fail("parameter layout: the input embedding must come first");
  return segments;
}

std::pair<int64_t, int64_t> flat_shard_range(int64_t total, int rank, int world) {
  if (world < 1 || rank < 0 || rank >= world || total < 0)
    fail("no rank {} of {} over {} values", rank, world, total);
  // total * rank / world without the overflow of the product: rank and the remainder are small.
  const int64_t quotient = total / world, remainder = total % world;
  const auto start = [&](int64_t r) { return quotient * r + remainder * r / world; };
  return {start(rank), start(int64_t{rank} + 1)};
}

namespace {
std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 5;
  std::string out;
  for (size_t i = 0; i < std::min(names.size(), kShown); ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kShown) out += fmt::format(" (and {} more)", names.size() - kShown);
  return out;
}
}  // namespace

namespace {

// The values of a tensor in memory or stored, as doubles (the tied-embedding comparison).
std::vector<double> f64_values(const Tensor& tensor) { return tensor.to_f64_vector(); }
std::vector<double> f64_values(const StoredTensor& tensor) { return tensor.read(DType::F64).to_f64_vector(); }

template <class Tensors>
void check_tensors_impl(const ParameterLayout& layout, const ModelConfig& config, const Tensors& tensors,
                        const std::string& source) {
  std::vector<std::string> missing, unexpected;
  for (const auto& view : layout.views()) {
    auto it = tensors.find(view.name);
    if (it == tensors.end()) {
      missing.push_back(view.name);
      continue;
    }
    const auto& tensor = it->second;
    if (tensor.shape() != view.shape)
      fail("{}: tensor '{}' has shape {}, the config needs {}", source, view.name,
           shape_string(tensor.shape()), shape_string(view.shape));
    if (!is_floating(tensor.dtype()))
      fail("{}: tensor '{}' has dtype {}, expected a floating type", source, view.name,
           dtype_name(tensor.dtype()));
  }
  for (const auto& [name, tensor] : tensors) {
    if (layout.contains(name)) continue;
    if (config.tie_word_embeddings && name == "embed_out.weight") {
      const auto& input = tensors.count("gpt_neox.embed_in.weight") ? tensors.at("gpt_neox.embed_in.weight") : tensor;
      if (tensor.shape() != input.shape() || f64_values(tensor) != f64_values(input))
        fail("{}: tie_word_embeddings is set but embed_out.weight differs from gpt_neox.embed_in.weight", source);
      continue;
    }
    unexpected.push_back(name);
  }
  if (!missing.empty()) fail("{}: missing tensors: {}", source, name_list(missing));
  if (!unexpected.empty()) fail("{}: unexpected tensors: {}", source, name_list(unexpected));
}

}  // namespace

void check_tensors(const ParameterLayout& layout, const ModelConfig& config, const TensorMap& tensors,
                   const std::string& source) {
  check_tensors_impl(layout, config, tensors, source);
}

void check_tensors(const ParameterLayout& layout, const ModelConfig& config, const StoredTensorMap& tensors,
                   const std::string& source) {
  check_tensors_impl(layout, config, tensors, source);
}

ParameterLayout ParameterLayout::gpt_neox(const ModelConfig& c) {
  const int64_t D = c.hidden_size, F = c.intermediate_size;
  ParameterLayout layout;
  layout.add("gpt_neox.embed_in.weight", {c.vocab_size, D});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = layer_prefix(l);
    layout.add(p + "input_layernorm.weight", {D});
    layout.add(p + "input_layernorm.bias", {D});
    layout.add(p + "post_attention_layernorm.weight", {D});
    layout.add(p + "post_attention_layernorm.bias", {D});
    layout.add(p + "attention.query_key_value.weight", {3 * D, D});
    if (c.attention_bias) layout.add(p + "attention.query_key_value.bias", {3 * D});
    layout.add(p + "attention.dense.weight", {D, D});
    if (c.attention_bias) layout.add(p + "attention.dense.bias", {D});
    if (c.is_dijiang()) {
      const int64_t d = c.head_dim(), H = c.num_heads;
      if (c.has_feature_map()) layout.add(p + "attention.proj_matrix", {d, d}, false);
      layout.add(p + "attention.W_G", {D, D});
      layout.add(p + "attention.group_norm.weight", {D});
      layout.add(p + "attention.group_norm.bias", {D});
      layout.add(p + "attention.log_gamma", {H}, c.dijiang.learnable_decay);
      if (c.dijiang.feature_weights) layout.add(p + "attention.feature_weights", {H, d});
    }
    if (c.is_linear() && c.linear.feature_map == cpu::LinearFeatureMap::Performer)
      layout.add(p + "attention.proj_matrix", {c.head_dim(), c.head_dim()}, false);
    layout.add(p + "mlp.dense_h_to_4h.weight", {F, D});
    layout.add(p + "mlp.dense_h_to_4h.bias", {F});
    layout.add(p + "mlp.dense_4h_to_h.weight", {D, F});
    layout.add(p + "mlp.dense_4h_to_h.bias", {D});
  }
  layout.add("gpt_neox.final_layer_norm.weight", {D});
  layout.add("gpt_neox.final_layer_norm.bias", {D});
  if (!c.tie_word_embeddings) layout.add("embed_out.weight", {c.vocab_size, D});
  return layout;
}

}  // namespace dj
