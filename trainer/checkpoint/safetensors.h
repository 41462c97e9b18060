// The safetensors format (docs/pythia.md, section 3).
#pragma once
#include <filesystem>
#include <map>
#include <string>

#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"

namespace dj {

// Opens the file and checks its header; the tensors are read when asked (StoredTensor), each range
// with one pread. Validates the header length (<= 100,000,000 and within
// the file), the JSON, dtypes, shapes against byte ranges, and that the tensors tile the data
// region without holes or overlaps. Any violation throws dj::Error naming the file (and tensor).
StoredTensorMap open_safetensors(const std::filesystem::path& path,
                                 std::map<std::string, std::string>* metadata = nullptr);

// Every tensor in its stored dtype (open_safetensors, then read_all).
TensorMap read_safetensors(const std::filesystem::path& path,
                           std::map<std::string, std::string>* metadata = nullptr);

// Writes atomically (temporary file in the same directory, then rename). The header first, then
// each tensor as the plan makes it: one tensor is held at a time.
void write_planned_safetensors(const std::filesystem::path& path, const TensorPlan& tensors,
                               const std::map<std::string, std::string>& metadata = {});
void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dj
