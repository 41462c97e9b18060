// The enumerations behind string options (YAML keys, config.json fields, command-line flags) and
// their spellings. A string becomes an enumeration where it is read (parse_choice); the rest of the
// program compares enumerations, never strings, so an unknown spelling cannot fall through to a
// default. To add a value: add it to the enum and to its Choices table; every reader, `train
// --list-keys` and the error messages follow.
#pragma once
#include <algorithm>
#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "kernels/core/error.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/linear_attention.h"

namespace dj {

// model.dijiang.sampling: how the DCT features' frequencies t are drawn (docs/method.md §3).
enum class FeatureSampling { QMC, MC };
// model.dijiang.projection: the projection inside the feature map softmax(x · P) (docs/method.md
// §3): dct, P = C diag(t) (DiJiang); gaussian, P = G diag(t) / sqrt(d) with G a Gaussian matrix (the
// ablation without the DCT); none, no feature map at all (RetNet-style retention).
enum class FeatureProjection { DCT, Gaussian, None };
// precision: the element type activations and weights are computed in (masters stay f32).
enum class Precision { F64, F32, BF16 };
// model.attention: what a training run does to the source model's attention: keep it, make it
// softmax, or convert a softmax source to DiJiang, RetNet-style retention or one of the normalised
// linear-attention baselines (performer, cosformer, elu; docs/method.md, section 8).
enum class TargetAttention { Keep, Softmax, DiJiang, RetNet, Performer, CosFormer, Elu };
// data.order: how training sequences are drawn from the token file.
enum class DataOrder { Shuffled, Pythia };
// stages[].loss: what a training stage minimises: lm, next-token cross-entropy; attention_transfer,
// the converted attention's distance to the softmax attention, layer by layer (docs/training.md).
enum class StageLoss { LanguageModel, AttentionTransfer };
// stages[].train: what a stage trains: all, every trainable tensor; added, only the tensors the
// attention conversion added (the gate, GroupNorm, a learnable decay, feature weights); added_qk,
// those and the query and key projections (the rows of query_key_value that make q and k).
enum class StageTrains { All, Added, AddedQK };

template <class E>
struct Choices;  // static constexpr std::array<std::pair<E, std::string_view>, N> values

template <>
struct Choices<FeatureSampling> {
  static constexpr std::array<std::pair<FeatureSampling, std::string_view>, 2> values{
      {{FeatureSampling::QMC, "qmc"}, {FeatureSampling::MC, "mc"}}};
};
template <>
struct Choices<FeatureProjection> {
  static constexpr std::array<std::pair<FeatureProjection, std::string_view>, 3> values{
      {{FeatureProjection::DCT, "dct"}, {FeatureProjection::Gaussian, "gaussian"}, {FeatureProjection::None, "none"}}};
};
template <>
struct Choices<cpu::DecayForm> {
  static constexpr std::array<std::pair<cpu::DecayForm, std::string_view>, 3> values{
      {{cpu::DecayForm::Parallel, "parallel"},
       {cpu::DecayForm::Chunkwise, "chunkwise"},
       {cpu::DecayForm::Recurrent, "recurrent"}}};
};
template <>
struct Choices<Precision> {
  static constexpr std::array<std::pair<Precision, std::string_view>, 3> values{
      {{Precision::F64, "f64"}, {Precision::F32, "f32"}, {Precision::BF16, "bf16"}}};
};
template <>
struct Choices<TargetAttention> {
  static constexpr std::array<std::pair<TargetAttention, std::string_view>, 7> values{
      {{TargetAttention::Keep, "keep"},
       {TargetAttention::Softmax, "softmax"},
       {TargetAttention::DiJiang, "dijiang"},
       {TargetAttention::RetNet, "retnet"},
       {TargetAttention::Performer, "performer"},
       {TargetAttention::CosFormer, "cosformer"},
       {TargetAttention::Elu, "elu"}}};
};
template <>
struct Choices<cpu::LinearFeatureMap> {
  static constexpr std::array<std::pair<cpu::LinearFeatureMap, std::string_view>, 3> values{
      {{cpu::LinearFeatureMap::Performer, "performer"},
       {cpu::LinearFeatureMap::CosFormer, "cosformer"},
       {cpu::LinearFeatureMap::Elu, "elu"}}};
};
template <>
struct Choices<DataOrder> {
  static constexpr std::array<std::pair<DataOrder, std::string_view>, 2> values{
      {{DataOrder::Shuffled, "shuffled"}, {DataOrder::Pythia, "pythia"}}};
};

template <>
struct Choices<StageLoss> {
  static constexpr std::array<std::pair<StageLoss, std::string_view>, 2> values{
      {{StageLoss::LanguageModel, "lm"}, {StageLoss::AttentionTransfer, "attention_transfer"}}};
};
template <>
struct Choices<StageTrains> {
  static constexpr std::array<std::pair<StageTrains, std::string_view>, 3> values{
      {{StageTrains::All, "all"}, {StageTrains::Added, "added"}, {StageTrains::AddedQK, "added_qk"}}};
};

template <class E>
constexpr std::string_view choice_name(E value) {
  for (const auto& [v, name] : Choices<E>::values)
    if (v == value) return name;
  return "?";
}

template <class E>
std::optional<E> find_choice(std::string_view name) {
  for (const auto& [v, spelling] : Choices<E>::values)
    if (spelling == name) return v;
  return std::nullopt;
}

// "a, b or c"
template <class E>
std::string choice_list() {
  std::string out;
  const auto& values = Choices<E>::values;
  for (size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += i + 1 == values.size() ? " or " : ", ";
    out += values[i].second;
  }
  return out;
}

// The enumeration spelt `name`; otherwise an error "WHERE: WHAT 'name' is not one of a, b or c".
template <class E>
E parse_choice(std::string_view name, std::string_view what, std::string_view where) {
  if (const std::optional<E> value = find_choice<E>(name)) return *value;
  fail("{}: {} '{}' is not {}", where, what, name, choice_list<E>());
}

}  // namespace dj
