// Per-rank (flat) checkpoints through the product's reader: the input is rank 0's file of a
// one-rank checkpoint whose COMPLETE marker is intact; the reader checks the checksum, the
// attributes and the datasets, and every value is read.
#include <vector>

#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/checkpoint/flat_checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::filesystem::path dir = [] {
    const std::filesystem::path path = dj::fuzz::scratch_dir() / "flat";
    std::filesystem::create_directories(path);
    return path;
  }();
  {
    std::ofstream(dir / "COMPLETE") << R"({"format":"dijiang-flat-shard","format_version":1,"world":1,"total":6})" << "\n";
  }
  const std::string_view bytes = dj::fuzz::as_text(data, size);
  std::ofstream(dir / dj::flat_shard_name(0, 1), std::ios::binary | std::ios::trunc)
      .write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  try {
    const dj::FlatCheckpointReader reader(dir);
    std::vector<float> values(static_cast<size_t>(reader.total()));
    reader.read(dj::kFlatParameters, 0, reader.total(), values.data());
  } catch (const dj::Error&) {
  }
  return 0;
}
