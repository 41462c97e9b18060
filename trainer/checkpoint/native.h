// The native checkpoint format: HDF5, readable with h5py.
//
// One file: root attributes `format` = "dijiang" (string), `format_version` = 1 (int64),
// `config` (JSON string: the model config) and `metadata` (JSON string, may be "{}"); one dataset
// per tensor at the root, named like the Hugging Face tensor (`gpt_neox.layers.0.mlp...`), in the
// tensor's dtype (BF16 is stored as uint16 with a dataset attribute `dtype` = "BF16").
//
// A directory: shard files `shard-XXXXX-of-YYYYY.h5`, each a complete file of the layout above
// holding a disjoint subset of the tensors and the same config, plus a `COMPLETE` marker written
// last. Readers refuse a directory without the marker or with missing shards.
//
// Writes are atomic: a file is written under a temporary name in the same directory and renamed;
// a directory is assembled under a temporary name and renamed.
#pragma once
#include <filesystem>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"

namespace dj {

inline constexpr int64_t kNativeFormatVersion = 1;

struct NativeCheckpoint {
  nlohmann::json config;
  nlohmann::json metadata = nlohmann::json::object();
  TensorMap tensors;
};

// The same, with the tensors read when asked (the files stay open while any StoredTensor lives).
struct StoredNativeCheckpoint {
  nlohmann::json config;
  nlohmann::json metadata = nlohmann::json::object();
  StoredTensorMap tensors;
};

void write_native_checkpoint(const std::filesystem::path& file, const NativeCheckpoint& checkpoint);
void write_native_checkpoint_directory(const std::filesystem::path& dir,
                                       const NativeCheckpoint& checkpoint, int shards);
// Streaming writes: each tensor is made when the writer reaches it and released after it is
// written, so one tensor is held at a time. The same tensors give the same bytes either way.
void write_native_checkpoint(const std::filesystem::path& file, const nlohmann::json& config,
                             const nlohmann::json& metadata, const TensorPlan& tensors);
void write_native_checkpoint_directory(const std::filesystem::path& dir, const nlohmann::json& config,
                                       const nlohmann::json& metadata, const TensorPlan& tensors, int shards);
// Accepts a file or a directory. Errors (not HDF5, wrong format attribute, newer version,
// truncated file, missing shards) throw dj::Error naming the file.
NativeCheckpoint read_native_checkpoint(const std::filesystem::path& path);
// Checks the same and every dataset's type, shape and storage, reading no tensor data: each
// tensor is read (whole or by rows, through an HDF5 hyperslab) when asked.
StoredNativeCheckpoint open_native_checkpoint(const std::filesystem::path& path);
// The files of the checkpoint at `path`: itself, or a directory's shards (after checking its
// marker and that no shard is missing or extra). Reads no HDF5.
std::vector<std::filesystem::path> native_checkpoint_files(const std::filesystem::path& path);
// True for a file that starts like a checkpoint file (checksum.h) or a directory holding native
// shards.
bool is_native_checkpoint(const std::filesystem::path& path);

}  // namespace dj
