// The safetensors format (docs/pythia.md, section 3).
#pragma once
#include <filesystem>
#include <map>
#include <string>

#include "trainer/checkpoint/tensor_map.h"

namespace dj {

// Reads every tensor in its stored dtype. Validates the header length (<= 100,000,000 and within
// the file), the JSON, dtypes, shapes against byte ranges, and that the tensors tile the data
// region without holes or overlaps. Any violation throws dj::Error naming the file (and tensor).
TensorMap read_safetensors(const std::filesystem::path& path,
                           std::map<std::string, std::string>* metadata = nullptr);

// Writes atomically (temporary file in the same directory, then rename).
void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace dj
