// Native checkpoint files through the product's reader: the checksum header first, then (for an
// intact checksum, or a file without one) HDF5 and the checks of native.cpp.
#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/checkpoint/native.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // A new name each time: the verified-file cache keys on the inode and modification time.
  static uint64_t count = 0;
  const auto path = dj::fuzz::write_file("ckpt-" + std::to_string(count++ % 2) + ".h5", dj::fuzz::as_text(data, size));
  try {
    dj::read_native_checkpoint(path);
  } catch (const dj::Error&) {
  }
  return 0;
}
