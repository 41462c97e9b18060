#include "trainer/data/tokenizer_text.h"

#include <fstream>
#include <iterator>
#include <string>

#include "kernels/core/error.h"

namespace dj {

std::vector<int32_t> encode_text_file(const Tokenizer& tokenizer, const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", path.string());
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail("{}: read failed", path.string());
  try {
    return tokenizer.encode(text);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

}  // namespace dj
