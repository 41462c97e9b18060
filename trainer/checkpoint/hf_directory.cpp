#include "trainer/checkpoint/hf_directory.h"

#include <array>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <string_view>

#include "kernels/core/error.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/checkpoint/torch_bin.h"

namespace dj {

namespace {

namespace fs = std::filesystem;

enum class Format { Safetensors, TorchBin };

struct Layout {
  const char* file;
  Format format;
  bool sharded;  // `file` is an index naming shard files
};

// In order of preference, as in the header.
constexpr std::array<Layout, 4> kLayouts = {{
    {"model.safetensors", Format::Safetensors, false},
    {"model.safetensors.index.json", Format::Safetensors, true},
    {"pytorch_model.bin", Format::TorchBin, false},
    {"pytorch_model.bin.index.json", Format::TorchBin, true},
}};

bool is_file(const fs::path& path) {
  std::error_code ec;
  return fs::is_regular_file(path, ec);
}

const Layout* find_layout(const fs::path& dir) {
  for (const Layout& layout : kLayouts)
    if (is_file(dir / layout.file)) return &layout;
  return nullptr;
}

nlohmann::json read_json_object(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open for reading", path.string());
  nlohmann::json json;
  try {
    json =
        nlohmann::json::parse(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad JSON: {}", path.string(), e.what());
  }
  if (!json.is_object())
    fail("{}: expected a JSON object, got {}", path.string(), json.type_name());
  return json;
}

// Per-layer buffers older GPT-NeoX code saved with the weights (a causal mask, its fill value and
// the rotary frequencies): derived state, not parameters. Only these exact names are dropped.
bool is_legacy_buffer(std::string_view name) {
  constexpr std::string_view kPrefix = "gpt_neox.layers.";
  if (!name.starts_with(kPrefix)) return false;
  name.remove_prefix(kPrefix.size());
  size_t digits = 0;
  while (digits < name.size() && name[digits] >= '0' && name[digits] <= '9') ++digits;
  if (digits == 0 || digits == name.size() || name[digits] != '.') return false;
  name.remove_prefix(digits + 1);
  return name == "attention.bias" || name == "attention.masked_bias" ||
         name == "attention.rotary_emb.inv_freq";
}

StoredTensorMap open_weights(const fs::path& path, Format format) {
  return format == Format::Safetensors ? open_safetensors(path) : open_torch_bin(path);
}

void drop_legacy_buffers(StoredTensorMap& tensors) {
  std::erase_if(tensors, [](const auto& entry) { return is_legacy_buffer(entry.first); });
}

// Reads every shard the index names, once each, and checks that the index and the shards agree
// exactly: a tensor the index promises but no shard holds, or one a shard holds that the index
// does not list for it, means a mixed-up or partially copied checkpoint.
StoredTensorMap open_sharded(const fs::path& dir, const fs::path& index_path, Format format) {
  const nlohmann::json index = read_json_object(index_path);
  const auto weight_map = index.find("weight_map");
  if (weight_map == index.end() || !weight_map->is_object())
    fail("{}: no \"weight_map\" object", index_path.string());

  std::map<std::string, std::set<std::string>>
      listed;  // shard file -> tensors the index assigns it
  for (const auto& [tensor, shard] : weight_map->items()) {
    if (!shard.is_string())
      fail("{}: weight_map entry for '{}' is not a file name: {}", index_path.string(), tensor,
           shard.dump());
    const std::string file = shard.get<std::string>();
    // Shards are siblings of the index; anything else would read outside the model directory.
    if (file.empty() || file == "." || file == ".." || file.find('/') != std::string::npos ||
        file.find('\\') != std::string::npos)
      fail("{}: tensor '{}' is mapped to '{}', which is not a file name in the directory",
           index_path.string(), tensor, file);
    if (!is_legacy_buffer(tensor)) listed[file].insert(tensor);
  }
  if (listed.empty()) fail("{}: the weight_map lists no tensors", index_path.string());

  StoredTensorMap tensors;
  std::map<std::string, std::string> source;  // tensor -> shard it came from
  for (const auto& [file, expected] : listed) {
    const fs::path shard_path = dir / file;
    if (!is_file(shard_path))
      fail("{}: shard '{}' (holding '{}') does not exist", index_path.string(), file,
           *expected.begin());
    StoredTensorMap shard = open_weights(shard_path, format);
    drop_legacy_buffers(shard);
    for (auto& [name, tensor] : shard) {
      if (const auto previous = source.find(name); previous != source.end())
        fail("{}: tensor '{}' is held by both shard '{}' and shard '{}'", index_path.string(), name,
             previous->second, file);
      if (!expected.contains(name)) {
        const auto mapped = weight_map->find(name);
        if (mapped == weight_map->end())
          fail("{}: shard '{}' holds tensor '{}', which the index does not list",
               index_path.string(), file, name);
        fail("{}: shard '{}' holds tensor '{}', which the index assigns to '{}'",
             index_path.string(), file, name, mapped->get<std::string>());
      }
      source.emplace(name, file);
      tensors.emplace(name, std::move(tensor));
    }
    for (const std::string& name : expected)
      if (!tensors.contains(name))
        fail("{}: tensor '{}' is missing from shard '{}'", index_path.string(), name, file);
  }
  return tensors;
}

}  // namespace

HFDirectory open_hf_directory(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) fail("{}: not a directory", dir.string());
  const fs::path config_path = dir / "config.json";
  if (!is_file(config_path))
    fail("{}: no config.json (not a Hugging Face model directory)", dir.string());
  HFDirectory checkpoint;
  checkpoint.config = read_json_object(config_path);
  const Layout* layout = find_layout(dir);
  if (!layout)
    fail(
        "{}: no weights (model.safetensors, model.safetensors.index.json, pytorch_model.bin or "
        "pytorch_model.bin.index.json)",
        dir.string());
  if (layout->sharded) {
    checkpoint.tensors = open_sharded(dir, dir / layout->file, layout->format);
  } else {
    checkpoint.tensors = open_weights(dir / layout->file, layout->format);
    drop_legacy_buffers(checkpoint.tensors);
  }
  return checkpoint;
}

HFCheckpoint read_hf_directory(const fs::path& dir) {
  HFDirectory opened = open_hf_directory(dir);
  return {std::move(opened.config), read_all(opened.tensors)};
}

bool is_hf_directory(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && is_file(path / "config.json") &&
         find_layout(path) != nullptr;
}

}  // namespace dj
