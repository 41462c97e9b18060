#include "trainer/model/source.h"

#include <fstream>

#include "kernels/core/error.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/hf_directory.h"
#include "trainer/checkpoint/native.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/parameters.h"

namespace dj {

ModelSource read_model_source(const std::filesystem::path& path) {
  namespace fs = std::filesystem;
  if (!fs::exists(path)) fail("{}: no such file or directory", path.string());
  ModelSource source;
  source.path = path;
  // Before is_native_checkpoint, which takes any directory with a COMPLETE marker for its own.
  const bool flat = is_flat_checkpoint(path);
  if (flat || is_native_checkpoint(path)) {
    NativeCheckpoint checkpoint = flat ? merge_flat_checkpoint(path) : read_native_checkpoint(path);
    source.kind = ModelSource::Kind::Native;
    source.hf_config = std::move(checkpoint.config);
    source.metadata = std::move(checkpoint.metadata);
    source.tensors = std::move(checkpoint.tensors);
    source.config = ModelConfig::from_hf_json(source.hf_config, path.string() + " (config attribute)");
    // Training checkpoints carry the optimizer state beside the model; keep it apart so that
    // every command can read them as models.
    for (auto it = source.tensors.begin(); it != source.tensors.end();) {
      if (it->first.starts_with("optimizer.")) {
        source.optimizer_state.insert(source.tensors.extract(it++));
      } else {
        ++it;
      }
    }
  } else if (is_hf_directory(path)) {
    HFCheckpoint checkpoint = read_hf_directory(path);
    source.kind = ModelSource::Kind::HuggingFace;
    source.hf_config = std::move(checkpoint.config);
    source.tensors = std::move(checkpoint.tensors);
    source.config = ModelConfig::from_hf_json(source.hf_config, (path / "config.json").string());
    // Directories exported for the reference DiJiang code are recognised by their D1 tables.
    if (has_interchange_tables(source.tensors)) import_interchange(source.tensors, source.config, path.string());
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
  return read_model_source(path).config;
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

void convert_to_dijiang(ModelSource& source, const DiJiangOptions& options) {
  if (source.config.is_dijiang()) fail("{} already has DiJiang attention", source.path.string());
  check_tensors(ParameterLayout::gpt_neox(source.config), source.config, source.tensors, source.path.string());
  source.config.attention = AttentionKind::DiJiang;
  source.config.dijiang = options;
  add_dijiang_tensors(source.tensors, source.config, DType::F64);
}

}  // namespace dj
