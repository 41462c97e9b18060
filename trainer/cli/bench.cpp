// dijiang bench model: CPU forward+backward throughput of a GPT-NeoX shape, as a fraction of
// this machine's measured sgemm rate (measured in the same run).
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "kernels/cpu/gemm.h"
#include "trainer/cli/commands.h"
#include "trainer/model/gpt_neox.h"

namespace dj::cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Best of several runs of a square sgemm: the machine's practical matrix rate in FLOP/s.
double measure_sgemm_rate(int64_t n, int repeats) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> a(static_cast<size_t>(n * n)), b(a.size()), c(a.size());
  for (auto& x : a) x = normal(rng);
  for (auto& x : b) x = normal(rng);
  double best = 1e30;
  for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up the library's threads
    const auto start = Clock::now();
    cpu::gemm<float>(false, true, n, n, n, 1.0f, a.data(), b.data(), 0.0f, c.data());
    if (r > 0) best = std::min(best, seconds_since(start));
  }
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / best;
}

// Forward FLOPs of one sequence: 2 per multiply-add of every matrix product, with causal
// attention counted over the lower triangle only.
double forward_flops(const ModelConfig& c, int64_t seq) {
  const double D = static_cast<double>(c.hidden_size), F = static_cast<double>(c.intermediate_size);
  const double per_token = 2.0 * (static_cast<double>(c.num_layers) * (4 * D * D + 2 * D * F) +
                                  static_cast<double>(c.vocab_size) * D);
  const double S = static_cast<double>(seq);
  const double attention = static_cast<double>(c.num_layers) * 2.0 * D * S * (S + 1);  // QK^T and PV
  return per_token * S + attention;
}

void initialise(GPTNeoX<float>& model, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  for (const auto& view : model.layout().views()) {
    float* p = model.parameter(view.name);
    const bool norm_weight = view.name.find("layernorm.weight") != std::string::npos ||
                             view.name.find("layer_norm.weight") != std::string::npos;
    const bool bias = view.shape.size() == 1;
    for (int64_t i = 0; i < view.numel(); ++i) p[i] = norm_weight ? 1.0f : bias ? 0.0f : normal(rng);
  }
}

struct BenchModelOptions {
  std::string config;
  int64_t seq_len = 512, batch = 1;
  int steps = 3;
  bool json = false;
};

void bench_model(const BenchModelOptions& o) {
  std::ifstream in(o.config);
  if (!in) fail("{}: cannot open", o.config);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: bad JSON: {}", o.config, e.what());
  }
  const ModelConfig config = ModelConfig::from_hf_json(json, o.config);
  GPTNeoX<float> model(config);
  initialise(model, 1234);
  std::mt19937 rng(99);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(o.batch * o.seq_len));
  for (auto& id : ids) id = token(rng);

  spdlog::info("measuring sgemm (2048^3) ...");
  const double sgemm = measure_sgemm_rate(2048, 3);
  spdlog::info("model {} ({:.1f}M parameters), batch {} x seq {}: warm-up step ...", o.config,
               static_cast<double>(config.parameter_count()) / 1e6, o.batch, o.seq_len);
  model.zero_gradients();
  model.forward(ids.data(), o.batch, o.seq_len);
  model.backward();
  std::vector<double> forward_s, backward_s;
  for (int s = 0; s < o.steps; ++s) {
    auto start = Clock::now();
    model.forward(ids.data(), o.batch, o.seq_len);
    forward_s.push_back(seconds_since(start));
    start = Clock::now();
    model.backward();
    backward_s.push_back(seconds_since(start));
  }
  std::sort(forward_s.begin(), forward_s.end());
  std::sort(backward_s.begin(), backward_s.end());
  const double fwd = forward_s[forward_s.size() / 2], bwd = backward_s[backward_s.size() / 2];
  const double tokens = static_cast<double>(o.batch * o.seq_len);
  const double flops = 3.0 * forward_flops(config, o.seq_len) * static_cast<double>(o.batch);
  const double rate = flops / (fwd + bwd);
  const nlohmann::json result = {
      {"config", o.config},         {"parameters", config.parameter_count()},
      {"batch", o.batch},           {"seq_len", o.seq_len},
      {"forward_ms", fwd * 1e3},    {"backward_ms", bwd * 1e3},
      {"tokens_per_s", tokens / (fwd + bwd)},
      {"forward_tokens_per_s", tokens / fwd},
      {"model_gflops", rate / 1e9}, {"sgemm_gflops", sgemm / 1e9},
      {"fraction_of_sgemm", rate / sgemm},
  };
  if (o.json) {
    std::printf("%s\n", result.dump().c_str());
    return;
  }
  std::printf("%-28s %12s\n", "measure (median of steps)", "value");
  std::printf("%-28s %12.1f\n", "forward ms", fwd * 1e3);
  std::printf("%-28s %12.1f\n", "backward ms", bwd * 1e3);
  std::printf("%-28s %12.0f\n", "fwd+bwd tokens/s", tokens / (fwd + bwd));
  std::printf("%-28s %12.0f\n", "forward-only tokens/s", tokens / fwd);
  std::printf("%-28s %12.2f\n", "model GFLOP/s", rate / 1e9);
  std::printf("%-28s %12.2f\n", "sgemm 2048^3 GFLOP/s", sgemm / 1e9);
  std::printf("%-28s %12.3f\n", "fraction of sgemm rate", rate / sgemm);
}

}  // namespace

void register_bench(CLI::App& app) {
  auto* bench = app.add_subcommand("bench", "benchmarks (timings are printed, never asserted)");
  bench->require_subcommand(1);
  auto* cmd = bench->add_subcommand("model", "forward+backward tokens/s of a model shape on the CPU");
  auto o = std::make_shared<BenchModelOptions>();
  cmd->add_option("--config", o->config, "GPT-NeoX config.json (e.g. configs/models/pythia-70m.json)")->required();
  cmd->add_option("--seq-len", o->seq_len, "sequence length")->check(CLI::Range(int64_t{2}, int64_t{1} << 20));
  cmd->add_option("--batch", o->batch, "sequences per step")->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--steps", o->steps, "timed steps (median reported)")->check(CLI::Range(1, 1000));
  cmd->add_flag("--json", o->json, "print one JSON object");
  cmd->callback([o] { bench_model(*o); });
}

}  // namespace dj::cli
