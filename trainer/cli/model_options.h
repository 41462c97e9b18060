// What the commands that use a model share: where its tokenizer is, and a decoder on the backend
// the command runs on.
#pragma once
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "trainer/model/decoder.h"
#include "trainer/model/source.h"

namespace dj::cli {

// `tokenizer` when given, else the model directory's own tokenizer.json, else the shipped GPT-NeoX one.
std::filesystem::path tokenizer_for(const std::string& model, const std::string& tokenizer);

// The model's end-of-text id: config.json's eos_token_id, else 0 (GPT-NeoX's <|endoftext|>).
int32_t end_of_text_id(const ModelSource& source);

// A decoder of `source` in `precision`: "f64" on the CPU, "bf16" on a GPU (an error without one),
// "f32" on a GPU when there is one (select_backend), else on the CPU. Logs "<activity> on <backend>".
std::unique_ptr<Decoder> open_decoder(ModelSource source, const std::string& precision, const std::string& activity);

// Refuses token ids outside the model's vocabulary, naming `what` (e.g. "the prompt") and, for
// tokenized text, the tokenizer used (empty: none).
void check_vocabulary(const std::vector<int32_t>& ids, const ModelConfig& config, const std::string& what,
                      const std::filesystem::path& tokenizer = {});

}  // namespace dj::cli
