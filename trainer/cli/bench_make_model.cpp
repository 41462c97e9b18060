// dijiang bench make-model: a Hugging Face directory of random weights for any GPT-NeoX config,
// written one tensor at a time, so that models larger than memory can be made for the streaming
// benchmarks (launch/bench_large_model.sh). The weights follow initial_tensors' distributions
// (trainer/model/init.h), each tensor drawn from its own stream.
#include <spdlog/spdlog.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/dtype_option.h"
#include "trainer/model/init.h"
#include "trainer/train/resources.h"

namespace dj::cli {

namespace {

namespace fs = std::filesystem;

struct MakeModelOptions {
  std::string config, to, dtype = "f32";
  uint64_t seed = 1;
  bool force = false;
};

nlohmann::json read_config_json(const std::string& path) {
  std::ifstream in(path);
  nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
  if (!in || json.is_discarded() || !json.is_object()) fail("{}: not a readable JSON object", path);
  return json;
}

void make_model(const MakeModelOptions& o) {
  const auto start = std::chrono::steady_clock::now();
  nlohmann::json hf = read_config_json(o.config);
  const ModelConfig config = ModelConfig::from_hf_json(hf, o.config);
  if (config.is_converted()) fail("{}: make-model writes softmax models; convert them with --attention dijiang", o.config);
  hf["torch_dtype"] = torch_dtype_name(o.dtype);
  const DType dtype = parse_floating_dtype(o.dtype);
  TensorPlan plan = random_tensor_plan(config, o.seed);
  size_t bytes = 0, largest = 0;
  for (auto& [name, planned] : plan) {
    if (dtype != DType::F32) {
      planned.make = [make = planned.make, dtype] { return make().to(dtype); };
      planned.dtype = dtype;
    }
    bytes += planned.nbytes();
    largest = std::max(largest, planned.nbytes());
  }
  const auto may_replace = [&](const fs::path& existing) {
    if (!o.force) fail("{}: directory exists and is not empty (pass --force to replace it)", existing.string());
    return true;
  };
  write_directory_atomically(o.to, may_replace, [&](const fs::path& dir) {
    write_planned_safetensors(dir / "model.safetensors", plan, {{"format", "pt"}});
    std::ofstream out(dir / "config.json");
    out << hf.dump(2) << "\n";
    out.close();
    if (!out) fail("{}: cannot write config.json", o.to);
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("wrote {} ({} tensors, {} parameters, {:.2f} GB in {}, largest tensor {:.1f} MB) in {:.1f} s, "
               "peak RSS {:.1f} MB",
               o.to, plan.size(), config.parameter_count(), static_cast<double>(bytes) / 1e9, o.dtype,
               static_cast<double>(largest) / 1e6, seconds, static_cast<double>(peak_resident_bytes()) / 1e6);
}

}  // namespace

void register_bench_make_model(CLI::App& bench) {
  auto* cmd = bench.add_subcommand(
      "make-model", "write a Hugging Face directory of random weights for a config, one tensor at a time");
  auto o = std::make_shared<MakeModelOptions>();
  cmd->add_option("--config", o->config, "GPT-NeoX config.json (e.g. configs/models/pythia-1b.json)")->required();
  cmd->add_option("--to", o->to, "output directory (config.json, model.safetensors)")->required();
  cmd->add_option("--dtype", o->dtype, "stored dtype: f32 (default), f64, f16 or bf16")
      ->check(CLI::IsMember(floating_dtype_names()));
  cmd->add_option("--seed", o->seed, "seed of the weights (default 1)");
  cmd->add_flag("--force", o->force, "replace an existing output directory");
  cmd->callback([o] { make_model(*o); });
}

}  // namespace dj::cli
