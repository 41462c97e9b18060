// dijiang eval: mean next-token loss and perplexity of a model on token windows.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "kernels/backend.h"
#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/model_options.h"
#include "trainer/data/npy.h"
#include "trainer/data/token_stream.h"
#include "trainer/data/tokenizer.h"
#include "trainer/data/tokenizer_text.h"
#include "trainer/model/evaluate.h"
#include "trainer/model/source.h"
#include "trainer/train/gpu.h"

namespace dj::cli {

namespace {
struct EvalOptions {
  std::string model, tokens, text, tokenizer;
  Precision precision = Precision::F32;
  cpu::DecayForm dijiang_form = cpu::DecayForm::Chunkwise;
  int64_t seq_len = 0, batch = 8;
  bool json = false;
};

}  // namespace

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "loss and perplexity on consecutive windows of tokens");
  auto o = std::make_shared<EvalOptions>();
  cmd->add_option("--model", o->model, "Hugging Face directory or native checkpoint")->required();
  auto* tokens = cmd->add_option("--tokens", o->tokens, "1-D .npy array of token ids, or an indexed-dataset prefix (PREFIX.bin/.idx; shards comma-separated)");
  auto* text = cmd->add_option("--text", o->text, "UTF-8 text file, tokenized first (see --tokenizer)");
  tokens->excludes(text);
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json for --text (default: the model directory's, else GPT-NeoX's)");
  cmd->add_option("--seq-len", o->seq_len, "window length in tokens")->required()->check(CLI::Range(int64_t{2}, int64_t{1} << 24));
  cmd->add_option("--batch", o->batch, "windows per forward pass")->check(CLI::Range(int64_t{1}, int64_t{1} << 16));
  add_choice(cmd, "--precision", o->precision,
             "f32 (default), f64 (on the CPU) or bf16 (on a GPU: bf16 activations and products)");
  auto* form = add_choice(cmd, "--dijiang-form", o->dijiang_form,
                          "DiJiang attention form: parallel, chunkwise or recurrent (default: the model's)");
  cmd->add_flag("--json", o->json, "print one JSON line {\"tokens\", \"loss\", \"ppl\"}");
  cmd->callback([o, form] {
    if (o->tokens.empty() && o->text.empty()) fail("eval needs --tokens FILE.npy or --text FILE");
    const std::vector<int32_t> ids = o->text.empty() ? read_token_stream(o->tokens)
                                                      : encode_text_file(Tokenizer::from_file(tokenizer_for(o->model, o->tokenizer)), o->text);
    ModelSource source = read_model_source(o->model);
    if (form->count() > 0) {
      if (!source.config.is_converted())
        fail("--dijiang-form applies to converted models; {} has softmax attention", o->model);
      source.config.dijiang.form = o->dijiang_form;
      source.config.linear.form = o->dijiang_form;
    }
    // f64 is the CPU's reference precision; the others run on the GPU when there is one.
    const BackendInfo backend =
        o->precision == Precision::F64 ? BackendInfo{Backend::CPU, cpu_description()} : select_backend();
    if (o->precision == Precision::BF16 && backend.backend != Backend::CUDA)
      fail("--precision bf16 needs a CUDA device; the CPU evaluates in f32 or f64");
    spdlog::info("evaluating on {}", backend.description);
    const auto start = std::chrono::steady_clock::now();
    EvalResult r;
    if (backend.backend == Backend::CUDA)
      r = gpu::evaluate(std::move(source), ids, o->seq_len, o->batch, o->precision);
    else if (o->precision == Precision::F64)
      r = evaluate_windows<double>(std::move(source), ids, o->seq_len, o->batch);
    else
      r = evaluate_windows<float>(std::move(source), ids, o->seq_len, o->batch);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double loss = r.loss_sum / static_cast<double>(r.predicted);
    if (o->json) {
      std::printf("%s\n", nlohmann::json{{"tokens", r.predicted}, {"loss", loss}, {"ppl", std::exp(loss)}}.dump().c_str());
      return;
    }
    std::printf("model      %s\n", o->model.c_str());
    std::printf("windows    %lld of up to %lld tokens (%lld tokens predicted)\n", static_cast<long long>(r.windows),
                static_cast<long long>(o->seq_len), static_cast<long long>(r.predicted));
    std::printf("loss       %.6f nats/token\n", loss);
    std::printf("perplexity %.4f\n", std::exp(loss));
    std::printf("time       %.2f s (%.0f tokens/s)\n", seconds,
                static_cast<double>(r.windows > 0 ? r.tokens_processed : 0) / std::max(seconds, 1e-9));
  });
}

}  // namespace dj::cli
