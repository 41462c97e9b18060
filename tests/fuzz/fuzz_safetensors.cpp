// safetensors: the 8-byte header length, the JSON header, dtypes, shapes and data offsets.
#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dj::fuzz::write_file("model.safetensors", dj::fuzz::as_text(data, size));
  try {
    std::map<std::string, std::string> metadata;
    dj::read_safetensors(path, &metadata);
  } catch (const dj::Error&) {
  }
  return 0;
}
