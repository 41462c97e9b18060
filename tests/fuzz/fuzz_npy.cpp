// .npy token files: the magic, the version, the header dictionary and the data length.
#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/data/npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dj::fuzz::write_file("tokens.npy", dj::fuzz::as_text(data, size));
  try {
    dj::read_npy_tokens(path);
  } catch (const dj::Error&) {
  }
  return 0;
}
