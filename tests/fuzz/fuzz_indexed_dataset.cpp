// Megatron / GPT-NeoX indexed datasets: the .idx index (header, sizes, pointers, document
// boundaries) against its .bin. The input is the .idx followed by the .bin; its first byte says
// where the .bin starts, in 1/256ths of the rest.
#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/data/indexed_dataset.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest = dj::fuzz::as_text(data + 1, size - 1);
  const size_t split = rest.size() * data[0] / 256;
  dj::fuzz::write_file("data.idx", rest.substr(0, split));
  dj::fuzz::write_file("data.bin", rest.substr(split));
  try {
    const dj::IndexedDataset dataset = dj::IndexedDataset::open((dj::fuzz::scratch_dir() / "data").string());
    // Every sample is read, so that the index's pointers are used and not only checked.
    dj::read_all_tokens({(dj::fuzz::scratch_dir() / "data").string()});
  } catch (const dj::Error&) {
  }
  return 0;
}
