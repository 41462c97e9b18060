// The restricted unpickler of torch.save's data.pkl (internal to trainer/checkpoint/torch_bin.cpp):
// the opcodes torch.save emits for a state dict (protocol 2, plus the framing and memo opcodes of
// protocol 4) and the globals a state dict needs (the tensor rebuild functions, storage types and
// OrderedDict); nothing that can import or call arbitrary code.
#pragma once
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/dtype.h"
#include "kernels/core/tensor.h"

namespace dj::torch_pickle {

struct StorageRef {
  DType dtype;
  std::string key;  // the record name under data/
  int64_t numel;    // elements, as the persistent id declares
};

struct TensorRef {
  StorageRef storage;
  int64_t offset;  // elements
  Shape size;
  Shape stride;
};

// The state dict's entries of a pickle, in pickle order: the tensors' names and the views they
// take of their storages (checked against the storages by the caller). Anything else throws
// dj::Error naming the opcode, global or entry.
std::vector<std::pair<std::string, TensorRef>> read_state_dict(std::span<const std::byte> pickle);

}  // namespace dj::torch_pickle
