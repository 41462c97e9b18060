#include "trainer/model/source.h"

#include <fstream>

#include "kernels/core/error.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/hf_directory.h"
#include "trainer/checkpoint/native.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/parameters.h"

namespace dj {

namespace {

// Moves the optimizer state ("optimizer.*", beside the model in training checkpoints) apart, so
// that every command can read them as models.
void separate_optimizer_state(StoredModelSource& source) {
  for (auto it = source.tensors.begin(); it != source.tensors.end();) {
    if (it->first.starts_with("optimizer.")) {
      source.optimizer_state.insert(source.tensors.extract(it++));
    } else {
      ++it;
    }
  }
}

StoredTensorMap in_memory(TensorMap tensors) {
  StoredTensorMap stored;
  for (auto& [name, tensor] : tensors) stored.emplace(name, StoredTensor::in_memory(std::move(tensor)));
  return stored;
}

// Replaces the reference code's D1/D2 tables (small) by log_gamma (import_interchange).
void import_interchange_tables(StoredModelSource& source) {
  TensorMap tables;
  for (auto it = source.tensors.begin(); it != source.tensors.end();) {
    if (it->first.ends_with(".attention.D1") || it->first.ends_with(".attention.D2")) {
      tables.emplace(it->first, it->second.read());
      it = source.tensors.erase(it);
    } else {
      ++it;
    }
  }
  import_interchange(tables, source.config, source.path.string());
  for (auto& [name, tensor] : tables) source.tensors.insert_or_assign(name, StoredTensor::in_memory(std::move(tensor)));
}

bool has_interchange_tables(const StoredTensorMap& tensors) {
  for (const auto& [name, tensor] : tensors)
    if (name.ends_with(".attention.D1")) return true;
  return false;
}

}  // namespace

StoredModelSource open_model_source(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) fail("{}: no such file or directory", path.string());
  StoredModelSource source;
  source.path = path;
  // Before is_native_checkpoint, which takes any directory with a COMPLETE marker for its own.
  const bool flat = is_flat_checkpoint(path);
  if (flat || is_native_checkpoint(path)) {
    if (flat) {
      NativeCheckpoint merged = merge_flat_checkpoint(path);
      source.hf_config = std::move(merged.config);
      source.metadata = std::move(merged.metadata);
      source.tensors = in_memory(std::move(merged.tensors));
    } else {
      StoredNativeCheckpoint checkpoint = open_native_checkpoint(path);
      source.hf_config = std::move(checkpoint.config);
      source.metadata = std::move(checkpoint.metadata);
      source.tensors = std::move(checkpoint.tensors);
    }
    source.kind = SourceKind::Native;
    source.config = ModelConfig::from_hf_json(source.hf_config, path.string() + " (config attribute)");
    separate_optimizer_state(source);
  } else if (is_hf_directory(path)) {
    HFDirectory checkpoint = open_hf_directory(path);
    source.kind = SourceKind::HuggingFace;
    source.hf_config = std::move(checkpoint.config);
    source.tensors = std::move(checkpoint.tensors);
    source.config = ModelConfig::from_hf_json(source.hf_config, (path / "config.json").string());
    // Directories exported for the reference DiJiang code are recognised by their D1 tables.
    if (has_interchange_tables(source.tensors)) import_interchange_tables(source);
  } else if (fs::is_directory(path)) {
    fail("{}: neither a Hugging Face model directory (config.json with model.safetensors, "
         "pytorch_model.bin or a sharded index), a native checkpoint directory nor a flat "
         "checkpoint directory (rank-RRRRR-of-NNNNN.h5 files)",
         path.string());
  } else {
    fail("{}: not a native checkpoint (no HDF5 signature); pass a Hugging Face model directory or "
         "a file written by `dijiang convert`",
         path.string());
  }
  return source;
}

ModelSource read_model_source(const std::filesystem::path& path) {
  StoredModelSource opened = open_model_source(path);
  ModelSource source;
  source.kind = opened.kind;
  source.path = std::move(opened.path);
  source.hf_config = std::move(opened.hf_config);
  source.metadata = std::move(opened.metadata);
  source.config = std::move(opened.config);
  source.tensors = read_all(opened.tensors);
  source.optimizer_state = read_all(opened.optimizer_state);
  return source;
}

ModelConfig read_model_config(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) fail("{}: no such file or directory", path.string());
  const auto parse_json = [](const fs::path& file) {
    std::ifstream in(file);
    nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
    if (!in || json.is_discarded()) fail("{}: not a readable JSON file", file.string());
    return ModelConfig::from_hf_json(json, file.string());
  };
  if (fs::is_regular_file(path) && path.extension() == ".json") return parse_json(path);
  if (is_flat_checkpoint(path)) {
    FlatCheckpointReader reader(path);
    return ModelConfig::from_hf_json(reader.config(), path.string());
  }
  // A directory exported for the reference DiJiang code without our config field reads as its
  // softmax config here: its D1 tables are only found with the tensors.
  if (!is_native_checkpoint(path) && is_hf_directory(path)) return parse_json(path / "config.json");
  return open_model_source(path).config;
}

TensorPlan validated_plan(const StoredModelSource& source, DType dtype) {
  const ParameterLayout layout = ParameterLayout::gpt_neox(source.config);
  check_tensors(layout, source.config, source.tensors, source.path.string());
  TensorPlan plan;
  for (const auto& view : layout.views()) {
    const StoredTensor& tensor = source.tensors.at(view.name);
    plan.emplace(view.name, PlannedTensor{dtype, tensor.shape(), [&tensor, dtype] { return tensor.read(dtype); }});
  }
  return plan;
}

TensorMap validated_tensors(const ModelSource& source, DType dtype) {
  const ParameterLayout layout = ParameterLayout::gpt_neox(source.config);
  check_tensors(layout, source.config, source.tensors, source.path.string());
  TensorMap out;
  for (const auto& view : layout.views()) {
    const Tensor& tensor = source.tensors.at(view.name);
    out.emplace(view.name, tensor.dtype() == dtype ? tensor : tensor.to(dtype));
  }
  return out;
}

namespace {

// Checks the softmax source and gives it the converted attention's config; the caller adds the
// tensors.
template <class Source>
void start_conversion(Source& source, const ModelConfig& target) {
  if (source.config.is_converted())
    fail("{} already has {} attention", source.path.string(), source.config.attention_name());
  check_tensors(ParameterLayout::gpt_neox(source.config), source.config, source.tensors, source.path.string());
  source.config.attention = target.attention;
  source.config.dijiang = target.dijiang;
  source.config.linear = target.linear;
}

ModelConfig dijiang_target(const DiJiangOptions& options) {
  ModelConfig c;
  c.attention = AttentionKind::DiJiang;
  c.dijiang = options;
  return c;
}

ModelConfig linear_target(const LinearOptions& options) {
  ModelConfig c;
  c.attention = AttentionKind::Linear;
  c.linear = options;
  return c;
}

void add_planned(StoredModelSource& source) {
  for (auto& [name, planned] : dijiang_tensor_plan(source.config, DType::F64))
    source.tensors.insert_or_assign(name, StoredTensor::made_by(planned.dtype, planned.shape, planned.make));
}

}  // namespace

void convert_to_dijiang(ModelSource& source, const DiJiangOptions& options) {
  start_conversion(source, dijiang_target(options));
  add_dijiang_tensors(source.tensors, source.config, DType::F64);
}

void convert_to_dijiang(StoredModelSource& source, const DiJiangOptions& options) {
  start_conversion(source, dijiang_target(options));
  add_planned(source);
}

void convert_to_linear(ModelSource& source, const LinearOptions& options) {
  start_conversion(source, linear_target(options));
  add_dijiang_tensors(source.tensors, source.config, DType::F64);
}

void convert_to_linear(StoredModelSource& source, const LinearOptions& options) {
  start_conversion(source, linear_target(options));
  add_planned(source);
}

}  // namespace dj
