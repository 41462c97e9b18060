// dijiang inspect --model PATH: config, parameter count and stored dtypes of a model.
// dijiang inspect --verify PATH: whether a checkpoint (or each checkpoint in a directory) is
// complete and its files match their checksums, without loading it.
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/checkpoint/verify.h"
#include "trainer/cli/commands.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/source.h"

namespace dj::cli {
namespace {

namespace fs = std::filesystem;

// The checkpoints `--verify PATH` checks: PATH itself if it is one, otherwise every checkpoint
// directly inside it (a training run's directory), in name order.
std::vector<fs::path> checkpoints_to_verify(const fs::path& path) {
  std::error_code error;
  if (!fs::exists(path, error)) fail("{}: no such file or directory", path.string());
  if (is_checkpoint(path)) return {path};
  if (!fs::is_directory(path, error))
    fail("{}: not a checkpoint (its start is neither a checksum header nor the HDF5 signature)", path.string());
  std::vector<fs::path> found;
  for (fs::directory_iterator it(path, error), end; !error && it != end; it.increment(error)) {
    // Hidden entries are staging directories and temporary files of saves in progress.
    if (it->path().filename().string().starts_with('.')) continue;
    if (is_checkpoint(it->path())) found.push_back(it->path());
  }
  if (error) fail("{}: cannot list it: {}", path.string(), error.message());
  if (found.empty()) fail("{}: holds no checkpoint", path.string());
  std::sort(found.begin(), found.end());
  return found;
}

std::string bytes_text(uint64_t bytes) {
  if (bytes >= (uint64_t{1} << 30)) return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / (1 << 30));
  if (bytes >= (uint64_t{1} << 20)) return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / (1 << 20));
  return fmt::format("{} bytes", bytes);
}

// Prints one line (or, with --json, one object) per checkpoint and fails if any is damaged.
void verify(const fs::path& path, bool json) {
  nlohmann::json report = nlohmann::json::array();
  int damaged = 0, unverified = 0;
  const std::vector<fs::path> checkpoints = checkpoints_to_verify(path);
  for (const fs::path& checkpoint : checkpoints) {
    nlohmann::json entry = {{"path", checkpoint.string()}};
    try {
      const std::vector<VerifiedFile> files = verify_checkpoint(checkpoint);
      uint64_t bytes = 0;
      int unsealed = 0;
      nlohmann::json listed = nlohmann::json::array();
      for (const VerifiedFile& file : files) {
        bytes += file.checksum.bytes;
        unsealed += file.checksum.sealed ? 0 : 1;
        listed.push_back({{"path", file.path.string()},
                          {"bytes", file.checksum.bytes},
                          {"xxh3_128", file.checksum.sealed ? nlohmann::json(file.checksum.digest) : nlohmann::json()}});
      }
      unverified += unsealed > 0 ? 1 : 0;
      entry["status"] = unsealed > 0 ? "unverified" : "intact";
      entry["bytes"] = bytes;
      entry["files"] = listed;
      if (!json)
        std::printf("%-10s %s  (%zu file%s, %s%s)\n", unsealed > 0 ? "unverified" : "intact", checkpoint.c_str(),
                    files.size(), files.size() == 1 ? "" : "s", bytes_text(bytes).c_str(),
                    unsealed > 0 ? fmt::format("; {} without a checksum", unsealed).c_str() : "");
    } catch (const Error& e) {
      ++damaged;
      entry["status"] = "damaged";
      entry["error"] = e.what();
      // The reason starts with the file it concerns, which is the checkpoint itself or one of its files.
      std::string_view reason = e.what();
      const std::string prefix = checkpoint.string() + ": ";
      if (reason.starts_with(prefix)) reason.remove_prefix(prefix.size());
      if (!json) std::printf("%-10s %s  (%.*s)\n", "damaged", checkpoint.c_str(), static_cast<int>(reason.size()), reason.data());
    }
    report.push_back(entry);
  }
  const auto count = static_cast<int>(checkpoints.size());
  if (json)
    std::printf("%s\n", nlohmann::json{{"checkpoints", report},
                                       {"intact", count - damaged - unverified},
                                       {"unverified", unverified},
                                       {"damaged", damaged}}
                            .dump()
                            .c_str());
  std::fflush(stdout);
  if (damaged > 0)
    fail("{} of {} checkpoint{} damaged", damaged, count, count == 1 ? " is" : "s are");
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "inspect", "show a model's config, parameter count and dtypes, or verify checkpoints' checksums");
  auto path = std::make_shared<std::string>();
  auto verify_path = std::make_shared<std::string>();
  auto json = std::make_shared<bool>(false);
  auto* model_option = cmd->add_option("--model", *path, "Hugging Face directory or native checkpoint");
  auto* verify_option = cmd->add_option(
      "--verify", *verify_path,
      "check that a checkpoint (file or directory), or every checkpoint in a training directory, is complete and "
      "matches its checksums, without loading it; exits 1 if any is damaged");
  model_option->excludes(verify_option);
  cmd->add_flag("--json", *json, "print one JSON object");
  cmd->callback([path, verify_path, json, model_option, verify_option] {
    if (verify_option->count() > 0) return verify(*verify_path, *json);
    if (model_option->count() == 0) fail("inspect needs --model PATH or --verify PATH");
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
    if (c.is_dijiang() && !c.has_feature_map())
      std::printf("  attention RetNet-style (DiJiang without a feature map): seed %llu, form %s (chunk %lld), "
                  "GroupNorm over %lld groups%s%s\n",
                  static_cast<unsigned long long>(c.dijiang.seed), choice_name(c.dijiang.form).data(),
                  static_cast<long long>(c.dijiang.chunk), static_cast<long long>(c.group_norm_groups()),
                  c.dijiang.feature_weights ? ", learned feature weights" : "",
                  c.dijiang.learnable_decay ? ", learnable decay" : "");
    else if (c.is_dijiang())
      std::printf("  attention DiJiang%s: sampling %s (seed %llu), form %s (chunk %lld), GroupNorm over %lld groups%s%s\n",
                  c.dijiang.projection == FeatureProjection::Gaussian ? " with a Gaussian projection (no DCT)" : "",
                  choice_name(c.dijiang.sampling).data(), static_cast<unsigned long long>(c.dijiang.seed),
                  choice_name(c.dijiang.form).data(),
                  static_cast<long long>(c.dijiang.chunk), static_cast<long long>(c.group_norm_groups()),
                  c.dijiang.feature_weights ? ", learned feature weights" : "",
                  c.dijiang.learnable_decay ? ", learnable decay" : "");
    else if (c.is_linear())
      std::printf("  attention %s (normalised linear attention, %lld features per head): seed %llu, form %s "
                  "(chunk %lld)\n",
                  c.attention_name().c_str(), static_cast<long long>(c.linear_features()),
                  static_cast<unsigned long long>(c.linear.seed), choice_name(c.linear.form).data(),
                  static_cast<long long>(c.linear.chunk));
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
