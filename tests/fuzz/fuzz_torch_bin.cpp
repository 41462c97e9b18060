// torch.save files (pytorch_model.bin): the zip archive (libzip) and the restricted unpickler.
#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/checkpoint/torch_bin.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dj::fuzz::write_file("pytorch_model.bin", dj::fuzz::as_text(data, size));
  try {
    dj::read_torch_bin(path);
  } catch (const dj::Error&) {
  }
  return 0;
}
