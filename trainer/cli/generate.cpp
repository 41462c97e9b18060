// dijiang generate: continues a prompt with a model. Softmax models decode over a key/value cache;
// DiJiang models take the prompt in one chunkwise pass and then one O(1) recurrent step per token.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/model_options.h"
#include "trainer/data/npy.h"
#include "trainer/data/tokenizer.h"
#include "trainer/model/sampling.h"
#include "trainer/model/source.h"

namespace dj::cli {

namespace {

struct GenerateOptions {
  std::string model, prompt, prompt_tokens, tokenizer;
  Precision precision = Precision::F32;
  int64_t max_new_tokens = 64;
  SamplingOptions sampling;
  bool stop_at_eos = false, json = false, greedy = false;
};

// Writes the text of the generated tokens to stdout as it becomes whole: the decoded text grows
// by whole characters, so a character split across tokens waits (as U+FFFD) for its last byte.
class TextStream {
 public:
  explicit TextStream(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  void update(const std::vector<int32_t>& tokens, bool last) {
    const std::string text = tokenizer_.decode(tokens);
    static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
    if (!last && text.size() >= kReplacement.size() &&
        std::string_view(text).substr(text.size() - kReplacement.size()) == kReplacement)
      return;
    if (text.compare(0, emitted_.size(), emitted_) != 0) return;  // earlier text changed: wait
    std::fwrite(text.data() + emitted_.size(), 1, text.size() - emitted_.size(), stdout);
    std::fflush(stdout);
    emitted_ = text;
  }

 private:
  const Tokenizer& tokenizer_;
  std::string emitted_;
};

void run_generate(const GenerateOptions& o) {
  const std::filesystem::path tokenizer_path = tokenizer_for(o.model, o.tokenizer);
  const Tokenizer tokenizer = Tokenizer::from_file(tokenizer_path);
  const bool from_text = o.prompt_tokens.empty();
  const std::vector<int32_t> prompt = from_text ? tokenizer.encode(o.prompt) : read_npy_tokens(o.prompt_tokens);
  if (prompt.empty()) fail("the prompt is empty: give at least one token");
  Sampler sampler(o.sampling);  // checks the sampling options before the model loads
  ModelSource source = read_model_source(o.model);
  const int32_t eos = end_of_text_id(source);
  if (from_text)
    check_vocabulary(prompt, source.config, "the prompt", tokenizer_path);
  else
    check_vocabulary(prompt, source.config, o.prompt_tokens);
  const std::unique_ptr<Decoder> decoder = open_decoder(std::move(source), o.precision, "generating");
  const int64_t vocab = decoder->config().vocab_size;

  const auto start = std::chrono::steady_clock::now();
  const auto n_prompt = static_cast<int64_t>(prompt.size());
  std::unique_ptr<Sequences> sequence = decoder->start(1, n_prompt + std::max<int64_t>(o.max_new_tokens, 1));
  std::vector<int32_t> generated;
  TextStream stream(tokenizer);
  if (o.max_new_tokens > 0) {
    const std::vector<double>* logits = &sequence->feed(prompt.data(), n_prompt);
    for (int64_t i = 0; i < o.max_new_tokens; ++i) {
      const int32_t token = sampler.next(logits->data(), vocab);
      generated.push_back(token);
      const bool stop = (o.stop_at_eos && token == eos) || i + 1 == o.max_new_tokens;
      if (!o.json) stream.update(generated, stop);
      if (stop) break;
      logits = &sequence->feed(&token, 1);
    }
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const double rate = static_cast<double>(generated.size()) / std::max(seconds, 1e-9);
  if (o.json) {
    const nlohmann::ordered_json line{{"prompt_tokens", prompt},
                              {"tokens", generated},
                              {"text", tokenizer.decode(generated)},
                              {"tokens_per_s", rate}};
    std::printf("%s\n", line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return;
  }
  std::printf("\n");
  std::fflush(stdout);
  spdlog::info("{} tokens after a prompt of {} in {:.2f} s ({:.1f} tokens/s); decoding state {:.1f} MiB",
               generated.size(), n_prompt, seconds, rate,
               static_cast<double>(sequence->state_bytes()) / (1024.0 * 1024.0));
}

}  // namespace

void register_generate(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "generate",
      "continue a prompt: softmax models over a key/value cache, DiJiang models with O(1) recurrent steps");
  auto o = std::make_shared<GenerateOptions>();
  cmd->add_option("--model", o->model, "Hugging Face directory or native checkpoint")->required();
  auto* text = cmd->add_option("--prompt", o->prompt, "prompt text (tokenized with --tokenizer)");
  auto* tokens = cmd->add_option("--prompt-tokens", o->prompt_tokens, "1-D .npy array of prompt token ids");
  text->excludes(tokens);
  cmd->add_option("--max-new-tokens", o->max_new_tokens, "tokens to generate (default 64)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24));
  auto* greedy = cmd->add_flag("--greedy", o->greedy, "take the most likely token every step (the default)");
  auto* temperature = cmd->add_option("--temperature", o->sampling.temperature, "sample at this temperature (> 0)");
  auto* top_k = cmd->add_option("--top-k", o->sampling.top_k, "sample among the k most likely tokens (0: all)");
  auto* top_p = cmd->add_option("--top-p", o->sampling.top_p,
                                "sample among the most likely tokens whose probability reaches p, in (0, 1]");
  for (auto* option : {temperature, top_k, top_p}) greedy->excludes(option);
  cmd->add_option("--seed", o->sampling.seed, "seed of the sampling (default 0)");
  cmd->add_flag("--stop-at-eos", o->stop_at_eos, "stop after the end-of-text token");
  cmd->add_flag("--json", o->json,
                "print one JSON line {\"prompt_tokens\", \"tokens\", \"text\", \"tokens_per_s\"} instead of streaming text");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the model directory's, else GPT-NeoX's)");
  add_choice(cmd, "--precision", o->precision, "f32 (default), f64 (on the CPU) or bf16 (on a GPU)");
  cmd->callback([o, text, tokens, temperature, top_k, top_p] {
    if (text->count() == 0 && tokens->count() == 0) fail("generate needs --prompt TEXT or --prompt-tokens FILE.npy");
    o->sampling.greedy = temperature->count() == 0 && top_k->count() == 0 && top_p->count() == 0;
    run_generate(*o);
  });
}

}  // namespace dj::cli
