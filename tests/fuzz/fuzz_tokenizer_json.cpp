// tokenizer.json: the model, merges, added tokens, normalizer and pre-tokenizer; a tokenizer that
// loads encodes and decodes a fixed text.
#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dj::fuzz::write_file("tokenizer.json", dj::fuzz::as_text(data, size));
  try {
    const dj::Tokenizer tokenizer = dj::Tokenizer::from_file(path);
    const std::vector<int32_t> ids = tokenizer.encode("Hello, world! <|endoftext|> 12 ünïcode\n\tend");
    (void)tokenizer.decode(ids);
  } catch (const dj::Error&) {
  }
  return 0;
}
