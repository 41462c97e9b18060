// PyTorch's zip-based torch.save format (pytorch_model.bin), read without Python: libzip for the
// archive and a restricted unpickler that accepts only the opcodes and globals a state dict needs.
#pragma once
#include <filesystem>

#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"

namespace dj {

// Returns the state dict's tensors in their stored dtype (contiguous copies of each view).
// Any other global than the tensor rebuild functions, storage types and OrderedDict, an opcode
// outside the allowed set, a bad zip or a storage shorter than a view throws dj::Error naming the
// file (and the tensor or opcode).
TensorMap read_torch_bin(const std::filesystem::path& path);

// Opens the archive and checks the pickle, every storage record's size and every view's bounds;
// a tensor's data is read when asked (its whole storage record, whatever rows are asked for).
StoredTensorMap open_torch_bin(const std::filesystem::path& path);

}  // namespace dj
