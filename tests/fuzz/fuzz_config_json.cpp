// Hugging Face config.json: JSON parsing and every key ModelConfig reads and checks.
#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "tests/fuzz/fuzz_support.h"
#include "trainer/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json json = nlohmann::json::parse(dj::fuzz::as_text(data, size), nullptr, false);
  if (json.is_discarded()) return 0;
  try {
    const dj::ModelConfig config = dj::ModelConfig::from_hf_json(json, "config.json");
    (void)config.to_hf_json();
    (void)config.parameter_count();
  } catch (const dj::Error&) {
  }
  return 0;
}
