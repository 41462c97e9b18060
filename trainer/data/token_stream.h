// A token stream from either kind of token file the tools accept.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dj {

// `spec` is a 1-D .npy array of ids, or the prefix of a Megatron/GPT-NeoX indexed dataset
// (PREFIX.bin + PREFIX.idx), or several such prefixes separated by commas (shards, joined in
// order). Documents follow one another as stored (each ends with its EOD token).
std::vector<int32_t> read_token_stream(const std::string& spec);

}  // namespace dj
