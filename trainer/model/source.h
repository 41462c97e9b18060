// Where a model comes from: a Hugging Face directory or a native checkpoint (file or directory).
#pragma once
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"
#include "trainer/model/config.h"

namespace dj {

enum class SourceKind { HuggingFace, Native };

// A model source with its tensors in memory (TensorMap) or read when asked (StoredTensorMap).
template <class Tensors>
struct BasicModelSource {
  using Kind = SourceKind;
  Kind kind = Kind::HuggingFace;
  std::filesystem::path path;
  nlohmann::json hf_config;  // the GPT-NeoX config.json fields
  nlohmann::json metadata = nlohmann::json::object();
  ModelConfig config;
  Tensors tensors;          // the model's tensors
  Tensors optimizer_state;  // training checkpoints: the AdamW moments, "optimizer.{m,v}.<name>"

  std::string kind_name() const { return kind == Kind::HuggingFace ? "Hugging Face directory" : "native checkpoint"; }
};

using ModelSource = BasicModelSource<TensorMap>;
using StoredModelSource = BasicModelSource<StoredTensorMap>;

// Reads config and tensors; the tensors are validated against the config when a model loads them.
ModelSource read_model_source(const std::filesystem::path& path);

// Opens a model for streaming: the config and every file's header are read and checked now, the
// tensors when asked (safetensors and native datasets by rows, a .bin storage whole). A flat
// checkpoint is merged in memory first: its ranks hold slices of flat buffers, not tensors.
StoredModelSource open_model_source(const std::filesystem::path& path);

// The model config alone, without reading tensors where the format allows: a GPT-NeoX config.json
// file, a Hugging Face directory's config.json (a directory of the reference DiJiang code without
// our config field reads as softmax), a flat checkpoint's header, a native checkpoint's headers.
ModelConfig read_model_config(const std::filesystem::path& path);

// The model's tensors, checked against its config (check_tensors), each converted straight from
// its stored dtype to `dtype` (one rounding at most).
TensorMap validated_tensors(const ModelSource& source, DType dtype);
// The same as a plan that reads and converts one tensor when a writer reaches it. It refers to
// `source`, which must outlive it.
TensorPlan validated_plan(const StoredModelSource& source, DType dtype);

// Turns a softmax model into a DiJiang one: checks the pretrained tensors, then adds the new
// ones initialised as the reference page says (add_dijiang_tensors). A DiJiang source is refused.
// For a stored source the new tensors are made when read.
void convert_to_dijiang(ModelSource& source, const DiJiangOptions& options);
void convert_to_dijiang(StoredModelSource& source, const DiJiangOptions& options);
// The same for a normalised linear-attention baseline (performer, cosformer, elu): the config
// becomes attention_kind linear with `options`, and the performer's layers gain proj_matrix.
void convert_to_linear(ModelSource& source, const LinearOptions& options);
void convert_to_linear(StoredModelSource& source, const LinearOptions& options);

}  // namespace dj
