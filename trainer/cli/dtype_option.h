// The --dtype spellings shared by the subcommands that write tensors.
#pragma once
#include <string>
#include <vector>

#include "kernels/core/dtype.h"

namespace dj::cli {

std::vector<std::string> floating_dtype_names();    // f32, f64, f16, bf16
DType parse_floating_dtype(const std::string& name);
std::string torch_dtype_name(const std::string& name);  // config.json's torch_dtype: "float32", ...

}  // namespace dj::cli
