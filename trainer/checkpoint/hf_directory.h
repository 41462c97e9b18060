// A Hugging Face model directory: config.json plus weights in one of four layouts.
#pragma once
#include <filesystem>

#include <nlohmann/json.hpp>

#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"

namespace dj {

struct HFCheckpoint {
  nlohmann::json config;  // config.json as written
  TensorMap tensors;      // stored dtypes; legacy buffers (see below) already removed
};

// The same, with the tensors read when asked.
struct HFDirectory {
  nlohmann::json config;
  StoredTensorMap tensors;
};

// Weights come from, in this order of preference: model.safetensors,
// model.safetensors.index.json (sharded), pytorch_model.bin, pytorch_model.bin.index.json.
// The index's weight_map must name existing shard files and every tensor a shard holds must be
// listed for that shard. The legacy per-layer buffers `attention.bias`, `attention.masked_bias`
// and `attention.rotary_emb.inv_freq` are skipped. Errors name the file.
HFCheckpoint read_hf_directory(const std::filesystem::path& dir);
// Checks config.json, the index and every weight file's header; reads no tensor data.
HFDirectory open_hf_directory(const std::filesystem::path& dir);

bool is_hf_directory(const std::filesystem::path& path);

}  // namespace dj
