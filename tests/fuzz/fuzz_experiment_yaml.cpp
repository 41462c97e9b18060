// YAML experiments: parsing, unknown keys, types and ranges, and the resolved experiment written
// back as YAML.
#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/config/experiment.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = dj::fuzz::write_file("experiment.yaml", dj::fuzz::as_text(data, size));
  try {
    const dj::Experiment experiment = dj::load_experiment(path, {});
    (void)dj::experiment_to_yaml(experiment);
  } catch (const dj::Error&) {
  }
  return 0;
}
