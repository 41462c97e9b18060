#include "trainer/data/token_stream.h"

#include <sstream>

#include "kernels/core/error.h"
#include "trainer/data/indexed_dataset.h"
#include "trainer/data/npy.h"

namespace dj {

std::vector<int32_t> read_token_stream(const std::string& spec) {
  if (spec.ends_with(".npy")) return read_npy_tokens(spec);
  std::vector<std::string> prefixes;
  std::stringstream in(spec);
  for (std::string prefix; std::getline(in, prefix, ',');) {
    if (prefix.empty()) fail("'{}': empty shard prefix", spec);
    prefixes.push_back(prefix);
  }
  if (prefixes.empty()) fail("no token file given");
  return read_all_tokens(prefixes);
}

}  // namespace dj
