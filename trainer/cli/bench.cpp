// dijiang bench model: CPU forward+backward throughput of a GPT-NeoX shape, as a fraction of
// this machine's measured sgemm rate (measured in the same run).
#include <omp.h>
#include <spdlog/spdlog.h>

#include <cmath>
#include <filesystem>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>

#include <nlohmann/json.hpp>

#include "kernels/backend.h"
#include "kernels/core/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/simd.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/report/plot.h"
#include "trainer/cli/commands.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/init.h"

namespace dj::cli {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Median of several runs of a square sgemm: the machine's practical matrix rate in FLOP/s, taken
// with the statistic the model's steps are (a best run against a median step would flatter the
// reference by the run-to-run spread, 1-3% here).
double measure_sgemm_rate(int64_t n, int repeats) {
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> a(static_cast<size_t>(n * n)), b(a.size()), c(a.size());
  for (auto& x : a) x = normal(rng);
  for (auto& x : b) x = normal(rng);
  std::vector<double> seconds;
  for (int r = 0; r < repeats + 1; ++r) {  // the first run warms up the library's threads
    const auto start = Clock::now();
    cpu::gemm<float>(false, true, n, n, n, 1.0f, a.data(), b.data(), 0.0f, c.data());
    if (r > 0) seconds.push_back(seconds_since(start));
  }
  std::sort(seconds.begin(), seconds.end());
  return 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) /
         seconds[seconds.size() / 2];
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
  model.load(initial_tensors(config, 1234), o.config);
  std::mt19937 rng(99);
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  std::vector<int32_t> ids(static_cast<size_t>(o.batch * o.seq_len));
  for (auto& id : ids) id = token(rng);

  warn_about_blas();
  const std::string blas = blas_description();
  spdlog::info("BLAS: {}", blas);
  spdlog::info("measuring sgemm (2048^3) ...");
  const double sgemm = measure_sgemm_rate(2048, 5);
  spdlog::info("model {} ({:.1f}M parameters), batch {} x seq {}: warm-up step ...", o.config,
               static_cast<double>(config.parameter_count()) / 1e6, o.batch, o.seq_len);
  model.zero_gradients();
  model.forward(ids.data(), o.batch, o.seq_len, true);  // a training step's forward
  model.backward();
  std::vector<double> forward_s, backward_s;
  for (int s = 0; s < o.steps; ++s) {
    auto start = Clock::now();
    model.forward(ids.data(), o.batch, o.seq_len, true);  // a training step's forward
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
      {"threads", omp_get_max_threads()},
      {"blas", blas},
      {"blas_build", blas_info().build},
      {"simd", cpu::simd_description(cpu::simd_width())},
  };
  if (o.json) {
    std::printf("%s\n", result.dump().c_str());
    return;
  }
  std::printf("BLAS: %s\n", blas.c_str());
  std::printf("SIMD: %s\n", cpu::simd_description(cpu::simd_width()).c_str());
  std::printf("threads: %d\n\n", omp_get_max_threads());
  std::printf("%-28s %12s\n", "measure (median of runs)", "value");
  std::printf("%-28s %12.1f\n", "forward ms", fwd * 1e3);
  std::printf("%-28s %12.1f\n", "backward ms", bwd * 1e3);
  std::printf("%-28s %12.0f\n", "fwd+bwd tokens/s", tokens / (fwd + bwd));
  std::printf("%-28s %12.0f\n", "forward-only tokens/s", tokens / fwd);
  std::printf("%-28s %12.2f\n", "model GFLOP/s", rate / 1e9);
  std::printf("%-28s %12.2f\n", "sgemm 2048^3 GFLOP/s", sgemm / 1e9);
  std::printf("%-28s %12.3f\n", "fraction of sgemm rate", rate / sgemm);
}

// ---------------------------------------------------------------------------------------------
// bench attention: softmax attention against the three DiJiang forms on one sequence of H heads.

struct BenchAttentionOptions {
  std::vector<int64_t> lengths = {512, 1024, 2048, 4096, 8192, 16384};
  std::vector<int64_t> contexts = {256, 1024, 4096, 16384};
  int64_t heads = 8, head_dim = 64, chunk = 64;
  double quadratic_limit_s = 30.0;  // skip a quadratic form once its predicted time passes this
  std::string out = "runs/bench-attention";
  bool json = false;
};

std::vector<float> random_vector(size_t n, uint32_t seed, float scale) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

template <typename F>
double time_seconds(F&& run) {
  const auto start = Clock::now();
  run();
  return seconds_since(start);
}

// The first run warms caches and thread pools; runs under a second are repeated and the median
// of three is reported.
template <typename F>
double measure_seconds(F&& run) {
  const double first = time_seconds(run);
  if (first > 1.0) return first;
  std::vector<double> times;
  for (int i = 0; i < 3; ++i) times.push_back(time_seconds(run));
  std::sort(times.begin(), times.end());
  return times[1];
}

struct AttentionInputs {
  int64_t H, L, d;
  std::vector<float> q, k, v, dout, P, log_gamma;
};

AttentionInputs attention_inputs(const BenchAttentionOptions& o, int64_t L) {
  const auto n = static_cast<size_t>(o.heads * L * o.head_dim);
  AttentionInputs in{o.heads, L, o.head_dim, random_vector(n, 1, 1.0f), random_vector(n, 2, 1.0f),
                     random_vector(n, 3, 1.0f), random_vector(n, 4, 1.0f), {}, {}};
  DiJiangOptions sampling;
  const std::vector<double> t = sample_feature_scales(sampling, o.head_dim, 0);
  in.P.resize(static_cast<size_t>(o.head_dim * o.head_dim));
  cpu::dct_projection<float>(in.P.data(), t.data(), o.head_dim);
  for (double g : reference_log_gamma(o.heads)) in.log_gamma.push_back(static_cast<float>(g));
  return in;
}

// Forward and backward of causal softmax attention (scores scaled by 1/sqrt(d)).
double softmax_attention_seconds(const AttentionInputs& in) {
  const size_t n = in.q.size();
  std::vector<float> o(n), lse(static_cast<size_t>(in.H * in.L)), dq(n), dk(n), dv(n);
  const float scale = 1.0f / std::sqrt(static_cast<float>(in.d));
  return measure_seconds([&] {
    cpu::causal_attention_forward(o.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), in.H, in.L, in.d, scale);
    cpu::causal_attention_backward(dq.data(), dk.data(), dv.data(), in.dout.data(), in.q.data(), in.k.data(),
                                   in.v.data(), o.data(), lse.data(), in.H, in.L, in.d, scale);
  });
}

// Forward and backward of the DiJiang core: both feature maps and the decayed attention.
double dijiang_attention_seconds(const AttentionInputs& in, cpu::DecayForm form, int64_t chunk) {
  const size_t n = in.q.size();
  const int64_t rows = in.H * in.L;
  std::vector<float> sq(n), sk(n), o(n), dfq(n), dfk(n), dv(n), dq(n), dk(n);
  return measure_seconds([&] {
    cpu::feature_map_forward(sq.data(), in.q.data(), in.P.data(), rows, in.d);
    cpu::feature_map_forward(sk.data(), in.k.data(), in.P.data(), rows, in.d);
    cpu::decay_attention_forward(o.data(), sq.data(), sk.data(), in.v.data(), in.log_gamma.data(), in.H, in.H, in.L,
                                 in.d, in.d, form, chunk);
    cpu::decay_attention_backward<float>(dfq.data(), dfk.data(), dv.data(), nullptr, in.dout.data(), sq.data(), sk.data(),
                                  in.v.data(), in.log_gamma.data(), in.H, in.H, in.L, in.d, in.d, form, chunk);
    cpu::feature_map_backward(dq.data(), dfq.data(), sq.data(), in.P.data(), rows, in.d);
    cpu::feature_map_backward(dk.data(), dfk.data(), sk.data(), in.P.data(), rows, in.d);
  });
}

// Per-token time of decoding after a prefix of `context` tokens: the state is prefilled
// chunkwise, then each step maps one q and k to features and updates the d x d state per head.
double decode_step_seconds(const BenchAttentionOptions& o, int64_t context) {
  const AttentionInputs in = attention_inputs(o, context);
  const int64_t H = o.heads, d = o.head_dim;
  std::vector<float> sk(in.k.size()), state(static_cast<size_t>(H * d * d));
  cpu::feature_map_forward(sk.data(), in.k.data(), in.P.data(), H * context, d);
  cpu::decay_attention_prefill_state(state.data(), sk.data(), in.v.data(), in.log_gamma.data(), H, H, context, d, d,
                                     o.chunk);
  constexpr int kSteps = 256;
  const auto token = static_cast<size_t>(H * d);
  const std::vector<float> q = random_vector(token * kSteps, 5, 1.0f), k = random_vector(token * kSteps, 6, 1.0f),
                           v = random_vector(token * kSteps, 7, 1.0f);
  std::vector<float> fq(token), fk(token), out(token);
  const double total = time_seconds([&] {
    for (int s = 0; s < kSteps; ++s) {
      const size_t at = token * static_cast<size_t>(s);
      cpu::feature_map_forward(fq.data(), q.data() + at, in.P.data(), H, d);
      cpu::feature_map_forward(fk.data(), k.data() + at, in.P.data(), H, d);
      cpu::decay_attention_step(out.data(), state.data(), fq.data(), fk.data(), v.data() + at, in.log_gamma.data(), H,
                                H, d, d);
    }
  });
  return total / kSteps;
}

void bench_attention(const BenchAttentionOptions& o) {
  warn_about_blas();
  spdlog::info("BLAS: {}", blas_description());
  struct Row {
    int64_t L;
    double softmax = NAN, parallel = NAN, chunkwise = NAN, recurrent = NAN;
  };
  std::vector<Row> rows;
  double last_softmax = 0.0, last_parallel = 0.0;
  for (int64_t L : o.lengths) {
    const AttentionInputs in = attention_inputs(o, L);
    Row row{L};
    // Quadratic forms grow 4x per doubling of L: predict before running.
    const double scale = rows.empty() ? 0.0 : std::pow(static_cast<double>(L) / static_cast<double>(rows.back().L), 2);
    if (last_softmax * scale <= o.quadratic_limit_s) row.softmax = last_softmax = softmax_attention_seconds(in);
    if (last_parallel * scale <= o.quadratic_limit_s)
      row.parallel = last_parallel = dijiang_attention_seconds(in, cpu::DecayForm::Parallel, o.chunk);
    row.chunkwise = dijiang_attention_seconds(in, cpu::DecayForm::Chunkwise, o.chunk);
    row.recurrent = dijiang_attention_seconds(in, cpu::DecayForm::Recurrent, o.chunk);
    if (std::isnan(row.softmax)) last_softmax = INFINITY;
    if (std::isnan(row.parallel)) last_parallel = INFINITY;
    spdlog::info("L = {}: softmax {:.1f} ms, DiJiang parallel {:.1f} ms, chunkwise {:.1f} ms, recurrent {:.1f} ms", L,
                 row.softmax * 1e3, row.parallel * 1e3, row.chunkwise * 1e3, row.recurrent * 1e3);
    rows.push_back(row);
  }
  std::vector<std::pair<int64_t, double>> decode;
  for (int64_t context : o.contexts) decode.emplace_back(context, decode_step_seconds(o, context));

  const auto ms = [](double s) { return std::isnan(s) ? nlohmann::json(nullptr) : nlohmann::json(s * 1e3); };
  nlohmann::json report = {{"heads", o.heads}, {"head_dim", o.head_dim}, {"chunk", o.chunk}, {"batch", 1},
                           {"threads", omp_get_max_threads()}, {"forward_backward_ms", nlohmann::json::array()},
                           {"decode_step_us", nlohmann::json::array()}};
  for (const Row& r : rows)
    report["forward_backward_ms"].push_back({{"L", r.L}, {"softmax", ms(r.softmax)}, {"dijiang_parallel", ms(r.parallel)},
                                             {"dijiang_chunkwise", ms(r.chunkwise)},
                                             {"dijiang_recurrent", ms(r.recurrent)},
                                             {"chunkwise_over_softmax", std::isnan(r.softmax) ? nlohmann::json(nullptr)
                                                                        : nlohmann::json(r.chunkwise / r.softmax)}});
  for (const auto& [context, seconds] : decode)
    report["decode_step_us"].push_back({{"context", context}, {"per_token_us", seconds * 1e6}});

  std::filesystem::create_directories(o.out);
  const std::filesystem::path json_path = std::filesystem::path(o.out) / "attention.json";
  write_text_atomically(json_path, report.dump(2) + "\n");
  std::vector<PlotSeries> series = {{"softmax attention", {}, {}}, {"DiJiang parallel", {}, {}},
                                    {"DiJiang chunkwise", {}, {}}, {"DiJiang recurrent", {}, {}}};
  for (const Row& r : rows) {
    const double values[] = {r.softmax, r.parallel, r.chunkwise, r.recurrent};
    for (size_t s = 0; s < series.size(); ++s) {
      series[s].x.push_back(static_cast<double>(r.L));
      series[s].y.push_back(values[s] * 1e3);
    }
  }
  const std::filesystem::path png = std::filesystem::path(o.out) / "attention.png";
  write_line_plot(png,
                  {fmt::format("Attention forward+backward on the CPU (B=1, H={}, d={}, {} threads)", o.heads,
                               o.head_dim, omp_get_max_threads()),
                   "sequence length L", "time (ms)", true, true},
                  series);
  if (o.json) {
    std::printf("%s\n", report.dump().c_str());
    return;
  }
  const auto cell = [](double s) { return std::isnan(s) ? std::string("skipped") : fmt::format("{:.1f}", s * 1e3); };
  std::printf("forward+backward, ms (B=1, H=%lld, d=%lld, chunk %lld)\n", static_cast<long long>(o.heads),
              static_cast<long long>(o.head_dim), static_cast<long long>(o.chunk));
  std::printf("%8s %12s %12s %12s %12s %16s\n", "L", "softmax", "dj-parallel", "dj-chunkwise", "dj-recurrent",
              "chunkwise/softmax");
  for (const Row& r : rows)
    std::printf("%8lld %12s %12s %12s %12s %16s\n", static_cast<long long>(r.L), cell(r.softmax).c_str(),
                cell(r.parallel).c_str(), cell(r.chunkwise).c_str(), cell(r.recurrent).c_str(),
                std::isnan(r.softmax) ? "-" : fmt::format("{:.3f}", r.chunkwise / r.softmax).c_str());
  std::printf("\ndecode step (feature maps + state update + output, all heads), us per token\n");
  for (const auto& [context, seconds] : decode)
    std::printf("%8lld %12.1f\n", static_cast<long long>(context), seconds * 1e6);
  std::printf("\nwrote %s and %s\n", json_path.c_str(), png.c_str());
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

  auto* attention = bench->add_subcommand("attention", "softmax attention vs the three DiJiang forms, and decoding");
  auto a = std::make_shared<BenchAttentionOptions>();
  attention->add_option("--lengths", a->lengths, "sequence lengths")->check(CLI::Range(int64_t{2}, int64_t{1} << 22));
  attention->add_option("--contexts", a->contexts, "decode contexts")->check(CLI::Range(int64_t{1}, int64_t{1} << 22));
  attention->add_option("--heads", a->heads, "heads (default 8)")->check(CLI::Range(int64_t{1}, int64_t{1024}));
  attention->add_option("--head-dim", a->head_dim, "head dimension (default 64)")->check(CLI::Range(int64_t{1}, int64_t{1024}));
  attention->add_option("--chunk", a->chunk, "chunk size (default 64)")->check(CLI::Range(int64_t{1}, int64_t{65536}));
  attention->add_option("--quadratic-limit", a->quadratic_limit_s, "skip a quadratic form predicted to take longer (s)");
  attention->add_option("--out", a->out, "directory for attention.json and attention.png");
  attention->add_flag("--json", a->json, "print the report as one JSON line");
  attention->callback([a] { bench_attention(*a); });

  register_bench_generate(*bench);
  register_bench_make_model(*bench);
}

}  // namespace dj::cli
