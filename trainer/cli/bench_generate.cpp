// dijiang bench generate: decoding tokens/s and decoding-state memory against the context length,
// for a softmax model (its key/value cache grows with the context) and its DiJiang conversion
// (a fixed state per layer), at batch 1 and a larger batch, on the backend the command runs on.
//
// Each point starts a decoding state with room for the context, treats the first `context`
// positions as filled (the state as it is after start: a step costs the same whatever the cache
// holds, and prefilling 32k tokens at every point would dominate the run) and times `steps`
// single-token steps through the whole model (embedding, every layer, the logits of the step).
#include <omp.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/model_options.h"
#include "trainer/model/init.h"
#include "trainer/model/source.h"
#include "trainer/report/plot.h"

namespace dj::cli {

namespace {

struct BenchGenerateOptions {
  std::string config = DIJIANG_DATA_DIR "/../configs/models/pythia-70m.json", out = "runs/bench-generate";
  Precision precision = Precision::F32;
  std::vector<int64_t> contexts = {256, 1024, 4096, 16384, 32768};
  std::vector<int64_t> batches = {1, 8};
  int64_t steps = 16;
  bool json = false;
};

struct Point {
  std::string model;
  int64_t batch = 0, context = 0;
  double step_ms = 0.0, tokens_per_s = 0.0, state_mib = 0.0;
};

// Median time of a single-token step at `context`, over `steps` steps after one warm-up step.
Point measure(Decoder& decoder, const std::string& name, int64_t batch, int64_t context, int64_t steps) {
  auto sequences = decoder.start(batch, context + steps + 1);
  sequences->skip_to(context);
  std::mt19937 rng(static_cast<uint32_t>(context * 31 + batch));
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(decoder.config().vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(batch));
  std::vector<double> times;
  for (int64_t s = 0; s <= steps; ++s) {
    for (auto& id : ids) id = token(rng);
    const auto start = std::chrono::steady_clock::now();
    sequences->feed(ids.data(), 1);  // returns after the logits reach the host
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (s > 0) times.push_back(seconds);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  return {name, batch, context, median * 1e3, static_cast<double>(batch) / median,
          static_cast<double>(sequences->state_bytes()) / (1024.0 * 1024.0)};
}

void bench_generate(const BenchGenerateOptions& o) {
  const ModelConfig config = read_model_config(o.config);
  if (config.is_converted()) fail("{}: give the softmax model's config; the benchmark converts it", o.config);
  std::vector<Point> points;
  for (const bool dijiang : {false, true}) {
    ModelSource source;
    source.path = o.config;
    source.config = config;
    source.tensors = initial_tensors(config, 1234);
    if (dijiang) convert_to_dijiang(source, DiJiangOptions{});
    const std::string name = dijiang ? "DiJiang" : "softmax";
    const std::unique_ptr<Decoder> decoder = open_decoder(std::move(source), o.precision, "decoding " + name);
    for (const int64_t batch : o.batches)
      for (const int64_t context : o.contexts) {
        const Point p = measure(*decoder, name, batch, context, o.steps);
        spdlog::info("{} batch {} context {}: {:.2f} ms per step, {:.1f} tokens/s, state {:.1f} MiB", name, batch,
                     context, p.step_ms, p.tokens_per_s, p.state_mib);
        points.push_back(p);
      }
  }

  nlohmann::json report = {{"config", o.config},     {"precision", choice_name(o.precision)}, {"threads", omp_get_max_threads()},
                           {"steps", o.steps},       {"points", nlohmann::json::array()}};
  for (const Point& p : points)
    report["points"].push_back({{"model", p.model},
                                {"batch", p.batch},
                                {"context", p.context},
                                {"step_ms", p.step_ms},
                                {"tokens_per_s", p.tokens_per_s},
                                {"state_mib", p.state_mib}});
  std::filesystem::create_directories(o.out);
  const std::filesystem::path json_path = std::filesystem::path(o.out) / "generate.json";
  write_text_atomically(json_path, report.dump(2) + "\n");
  std::vector<PlotSeries> series;
  for (const std::string model : {"softmax", "DiJiang"})
    for (const int64_t batch : o.batches) {
      PlotSeries s{fmt::format("{}, batch {}", model == "softmax" ? "softmax (KV cache)" : "DiJiang (recurrent)", batch),
                   {}, {}};
      for (const Point& p : points)
        if (p.model == model && p.batch == batch) {
          s.x.push_back(static_cast<double>(p.context));
          s.y.push_back(p.tokens_per_s);
        }
      series.push_back(std::move(s));
    }
  const std::filesystem::path png = std::filesystem::path(o.out) / "generate.png";
  write_line_plot(png,
                  {fmt::format("Decoding {} ({}, {} threads)", std::filesystem::path(o.config).stem().string(),
                               choice_name(o.precision), omp_get_max_threads()),
                   "context length (tokens)", "tokens/s", true, true},
                  series);
  if (o.json) {
    std::printf("%s\n", report.dump().c_str());
    return;
  }
  std::printf("decoding %s: ms per step (tokens/s), decoding state MiB\n", o.config.c_str());
  std::printf("%-8s %6s %9s %22s %12s\n", "model", "batch", "context", "ms/step (tokens/s)", "state MiB");
  for (const Point& p : points)
    std::printf("%-8s %6lld %9lld %10.2f (%9.1f) %12.3f\n", p.model.c_str(), static_cast<long long>(p.batch),
                static_cast<long long>(p.context), p.step_ms, p.tokens_per_s, p.state_mib);
  // The ratios the design is about, per batch: DiJiang's flatness and its lead at long contexts.
  for (const int64_t batch : o.batches) {
    const auto find = [&](const std::string& model, int64_t context) -> const Point* {
      for (const Point& p : points)
        if (p.model == model && p.batch == batch && p.context == context) return &p;
      return nullptr;
    };
    const Point* first = find("DiJiang", o.contexts.front());
    const Point* last = find("DiJiang", o.contexts.back());
    const Point* soft = find("softmax", o.contexts.back());
    if (first && last && soft)
      std::printf("batch %lld: DiJiang step time at %lld / at %lld = %.2f; DiJiang / softmax tokens/s at %lld = %.2f\n",
                  static_cast<long long>(batch), static_cast<long long>(o.contexts.back()),
                  static_cast<long long>(o.contexts.front()), last->step_ms / first->step_ms,
                  static_cast<long long>(o.contexts.back()), last->tokens_per_s / soft->tokens_per_s);
  }
  std::printf("\nwrote %s and %s\n", json_path.c_str(), png.c_str());
}

}  // namespace

void register_bench_generate(CLI::App& bench) {
  auto* cmd = bench.add_subcommand("generate", "decoding tokens/s and state memory against context length");
  auto o = std::make_shared<BenchGenerateOptions>();
  cmd->add_option("--config", o->config, "softmax GPT-NeoX config.json (default: the repository's configs/models/pythia-70m.json)");
  cmd->add_option("--contexts", o->contexts, "context lengths (default 256 1024 4096 16384 32768)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 22));
  cmd->add_option("--batches", o->batches, "batch sizes (default 1 8)")->check(CLI::Range(int64_t{1}, int64_t{4096}));
  cmd->add_option("--steps", o->steps, "timed steps per point (median reported; default 16)")
      ->check(CLI::Range(int64_t{1}, int64_t{100000}));
  add_choice(cmd, "--precision", o->precision, "f32 (default), f64 (on the CPU) or bf16 (on a GPU)");
  cmd->add_option("--out", o->out, "directory for generate.json and generate.png");
  cmd->add_flag("--json", o->json, "print the report as one JSON line");
  cmd->callback([o] { bench_generate(*o); });
}

}  // namespace dj::cli
