// dijiang inspect --model PATH: config, parameter count and stored dtypes of a model.
#include <cstdio>
#include <map>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/source.h"

namespace dj::cli {

void register_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand("inspect", "show a model's config, parameter count and dtypes");
  auto path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  cmd->add_option("--model", *path, "Hugging Face directory or native checkpoint")->required();
  cmd->add_flag("--json", *json, "print one JSON object");
  cmd->callback([path, json] {
    ModelSource source = read_model_source(*path);
    // Loading into a model validates every tensor name and shape against the config.
    GPTNeoX<float> model(source.config);
    model.load(source.tensors, source.path.string());
    std::map<std::string, int64_t> by_dtype;
    int64_t stored = 0;
    for (const auto& [name, tensor] : source.tensors) {
      by_dtype[std::string(dtype_name(tensor.dtype()))] += tensor.numel();
      stored += tensor.numel();
    }
    const ModelConfig& c = source.config;
    nlohmann::json out = {
        {"path", source.path.string()},
        {"format", source.kind == ModelSource::Kind::HuggingFace ? "hf" : "native"},
        {"parameters", c.parameter_count()},
        {"tensors", source.tensors.size()},
        {"dtypes", by_dtype},
        {"config", c.to_hf_json()},
        {"metadata", source.metadata},
    };
    if (*json) {
      std::printf("%s\n", out.dump().c_str());
      return;
    }
    std::printf("%s (%s)\n", source.path.string().c_str(), source.kind_name().c_str());
    std::printf("  layers %lld, hidden %lld, heads %lld (head dim %lld, rotary dims %lld), ffn %lld, vocab %lld\n",
                static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
                static_cast<long long>(c.num_heads), static_cast<long long>(c.head_dim()),
                static_cast<long long>(c.rotary_dims()), static_cast<long long>(c.intermediate_size),
                static_cast<long long>(c.vocab_size));
    std::printf("  residual %s, activation %s, layer_norm_eps %g, rotary base %g, max positions %lld\n",
                c.use_parallel_residual ? "parallel" : "sequential", c.hidden_act.c_str(), c.layer_norm_eps,
                c.rotary_emb_base, static_cast<long long>(c.max_position_embeddings));
    if (c.is_dijiang())
      std::printf("  attention DiJiang: sampling %s (seed %llu), form %s (chunk %lld), GroupNorm over %lld groups%s%s\n",
                  c.dijiang.sampling.c_str(), static_cast<unsigned long long>(c.dijiang.seed), c.dijiang.form.c_str(),
                  static_cast<long long>(c.dijiang.chunk), static_cast<long long>(c.group_norm_groups()),
                  c.dijiang.feature_weights ? ", learned feature weights" : "",
                  c.dijiang.learnable_decay ? ", learnable decay" : "");
    else
      std::printf("  attention softmax\n");
    std::printf("  parameters %lld (%.2fM) in %zu tensors\n", static_cast<long long>(c.parameter_count()),
                static_cast<double>(c.parameter_count()) / 1e6, source.tensors.size());
    for (const auto& [dtype, count] : by_dtype)
      std::printf("  stored as %s: %lld values\n", dtype.c_str(), static_cast<long long>(count));
    if (!source.metadata.empty()) std::printf("  metadata %s\n", source.metadata.dump().c_str());
  });
}

}  // namespace dj::cli
