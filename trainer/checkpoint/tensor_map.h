// Named tensors as read from or written to a checkpoint file, in name order.
#pragma once
#include <map>
#include <string>

#include "kernels/core/tensor.h"

namespace dj {

using TensorMap = std::map<std::string, Tensor>;

}  // namespace dj
