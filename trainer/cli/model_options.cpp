#include "trainer/cli/model_options.h"

#include <spdlog/spdlog.h>

#include <utility>

#include "kernels/backend.h"
#include "kernels/core/error.h"
#include "trainer/train/gpu.h"

namespace dj::cli {

std::filesystem::path tokenizer_for(const std::string& model, const std::string& tokenizer) {
  if (!tokenizer.empty()) return tokenizer;
  const std::filesystem::path beside_model = std::filesystem::path(model) / "tokenizer.json";
  if (std::filesystem::is_regular_file(beside_model)) return beside_model;
  return DIJIANG_DATA_DIR "/tokenizer/tokenizer.json";
}

int32_t end_of_text_id(const ModelSource& source) {
  const auto it = source.hf_config.find("eos_token_id");
  if (it != source.hf_config.end() && it->is_number_integer()) return it->get<int32_t>();
  return 0;
}

void check_vocabulary(const std::vector<int32_t>& ids, const ModelConfig& config, const std::string& what,
                      const std::filesystem::path& tokenizer) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= config.vocab_size)
      fail("{} has token id {} (at {}), outside the model's vocabulary of {}{}", what, ids[i], i, config.vocab_size,
           tokenizer.empty() ? "" : fmt::format(": is {} the model's tokenizer?", tokenizer.string()));
}

std::unique_ptr<Decoder> open_decoder(ModelSource source, Precision precision, const std::string& activity) {
  const BackendInfo backend =
      precision == Precision::F64 ? BackendInfo{Backend::CPU, cpu_description()} : select_backend();
  if (precision == Precision::BF16 && backend.backend != Backend::CUDA)
    fail("--precision bf16 needs a CUDA device; the CPU runs in f32 or f64");
  spdlog::info("{} on {}", activity, backend.description);
  if (backend.backend == Backend::CUDA) return gpu::make_decoder(std::move(source), precision);
  return make_cpu_decoder(std::move(source), precision);
}

}  // namespace dj::cli
