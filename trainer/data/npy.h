// NumPy .npy files (format versions 1-3) holding a 1-D integer array of token ids.
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace dj {

// Accepts little-endian or byte-order-free integer dtypes (u1, u2, u4, u8, i1, i2, i4, i8) in C
// order. Values must lie in [0, 2^31). Any other layout, a truncated file or a malformed header
// throws dj::Error naming the file.
std::vector<int32_t> read_npy_tokens(const std::filesystem::path& path);

}  // namespace dj
