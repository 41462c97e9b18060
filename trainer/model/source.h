// Where a model comes from: a Hugging Face directory or a native checkpoint (file or directory).
#pragma once
#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

#include "trainer/checkpoint/tensor_map.h"
#include "trainer/model/config.h"

namespace dj {

struct ModelSource {
  enum class Kind { HuggingFace, Native };
  Kind kind = Kind::HuggingFace;
  std::filesystem::path path;
  nlohmann::json hf_config;  // the GPT-NeoX config.json fields
  nlohmann::json metadata = nlohmann::json::object();
  ModelConfig config;
  TensorMap tensors;          // the model's tensors
  TensorMap optimizer_state;  // training checkpoints: the AdamW moments, "optimizer.{m,v}.<name>"

  std::string kind_name() const { return kind == Kind::HuggingFace ? "Hugging Face directory" : "native checkpoint"; }
};

// Reads config and tensors; the tensors are validated against the config when a model loads them.
ModelSource read_model_source(const std::filesystem::path& path);

// The model config alone, without reading tensors where the format allows: a GPT-NeoX config.json
// file, a Hugging Face directory's config.json (a directory of the reference DiJiang code without
// our config field reads as softmax), a flat checkpoint's header; a native checkpoint is read whole.
ModelConfig read_model_config(const std::filesystem::path& path);

// The model's tensors, checked against its config (check_tensors), each converted straight from
// its stored dtype to `dtype` (one rounding at most).
TensorMap validated_tensors(const ModelSource& source, DType dtype);

// Turns a softmax model into a DiJiang one: checks the pretrained tensors, then adds the new
// ones initialised as the reference page says (add_dijiang_tensors). A DiJiang source is refused.
void convert_to_dijiang(ModelSource& source, const DiJiangOptions& options);

}  // namespace dj
