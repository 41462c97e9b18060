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

// Writes `ids` (all >= 0) atomically as a 1-D .npy file (format 1.0): '<u2' when every id is below
// 65536, otherwise '<i4'. Throws dj::Error naming the file on a negative id or a failed write.
void write_npy_tokens(const std::filesystem::path& path, const std::vector<int32_t>& ids);

}  // namespace dj
