// What the commands that use a model share: where its tokenizer is, and a decoder on the backend
// the command runs on.
#pragma once
#include <CLI/CLI.hpp>

#include <filesystem>
#include <optional>
#include <memory>
#include <string>
#include <vector>

#include "trainer/config/choices.h"
#include "trainer/model/decoder.h"
#include "trainer/model/source.h"

namespace dj::cli {

// `tokenizer` when given, else the model directory's own tokenizer.json, else the shipped GPT-NeoX one.
std::filesystem::path tokenizer_for(const std::string& model, const std::string& tokenizer);

// The model's end-of-text id: config.json's eos_token_id, else 0 (GPT-NeoX's <|endoftext|>).
int32_t end_of_text_id(const ModelSource& source);

// A decoder of `source` in `precision`: f64 on the CPU, bf16 on a GPU (an error without one),
// f32 on a GPU when there is one (select_backend), else on the CPU. Logs "<activity> on <backend>".
std::unique_ptr<Decoder> open_decoder(ModelSource source, Precision precision, const std::string& activity);

// `--flag CHOICE` for an enumeration (trainer/config/choices.h): its spellings are the allowed values.
template <class E>
CLI::Option* add_choice(CLI::App* cmd, const std::string& flag, E& target, const std::string& help) {
  std::string names;
  for (const auto& [value, name] : Choices<E>::values) names += (names.empty() ? "" : ",") + std::string(name);
  const CLI::Validator spelling(
      [](std::string& input) -> std::string {
        const std::optional<E> value = find_choice<E>(input);
        if (!value) return "'" + input + "' is not " + choice_list<E>();
        input = std::to_string(static_cast<int>(*value));  // what CLI11 converts to the enumeration
        return {};
      },
      "{" + names + "}");
  return cmd->add_option(flag, target, help)->transform(spelling);
}

// Refuses token ids outside the model's vocabulary, naming `what` (e.g. "the prompt") and, for
// tokenized text, the tokenizer used (empty: none).
void check_vocabulary(const std::vector<int32_t>& ids, const ModelConfig& config, const std::string& what,
                      const std::filesystem::path& tokenizer = {});

}  // namespace dj::cli
