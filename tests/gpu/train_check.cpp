// train_check: the trainer's ZeRO state on GPUs against the CPU (needs a GPU and NCCL; built by
// tests/gpu/CMakeLists.txt, and on the CUDA emulation by tests/cuda_emulation).
//
// Small DiJiang and softmax models train a few steps through training_step() — the function the
// training loop calls — with AdamW's ε = 1, so the update is linear in the gradient and rounding
// noise is not amplified into ±lr steps — on the CPU (one process, ZeRO stage 0: the reference) and
// on GPUs: one
// rank through the NCCL communicator at ZeRO stages 0-3 in fp32 and bf16, then, when two or more
// GPUs are visible, two ranks (threads, one GPU each) at every stage, each rank taking its slice of
// the global batch as the loop does. Compared: every step's loss (relative) and the final
// parameters and AdamW moments (relative L2 over the whole buffer, and the worst tensor). fp32
// within 1e-5 (1e-4 per tensor), bf16 within 2e-2.
//
// Usage: train_check [--seed N] [--max-ranks N]. Exit status 0 when every case passed, 1 when one
// failed, 2 when no CUDA device can be used.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "comm/nccl/nccl_communicator.h"
#include "comm/single_communicator.h"
#include "model_values.h"
#include "thread_communicator.h"
#include "trainer/model/cuda_ops.h"
#include "trainer/train/sharded_training.h"
#include "trainer/train/training_step.h"

namespace {

using namespace dj;

constexpr int kSteps = 3;
constexpr int64_t kGlobal = 6, kMicroBatch = 2, kTokens = 33;

ModelConfig small_config(bool dijiang) {
  ModelConfig c;
  c.vocab_size = 211;
  c.hidden_size = 128;
  c.num_layers = 2;
  c.num_heads = 2;
  c.intermediate_size = 256;
  c.rotary_pct = 0.25;
  c.use_parallel_residual = dijiang;
  c.tie_word_embeddings = !dijiang;
  if (dijiang) {
    c.attention = AttentionKind::DiJiang;
    c.dijiang.chunk = 16;
    c.dijiang.learnable_decay = true;
  }
  return c;
}

// One run's results: every step's loss and the final flat buffers (whole, on the host).
struct RunResult {
  std::vector<double> losses;
  std::vector<float> params, m, v;
};

struct Problem {
  ModelConfig config;
  std::vector<float> initial;                  // the flat parameters
  std::vector<std::vector<int32_t>> batches;   // per step, kGlobal sequences of kTokens ids
};

Problem make_problem(bool dijiang, uint64_t seed) {
  Problem p;
  p.config = small_config(dijiang);
  std::mt19937_64 rng(seed);
  const std::vector<double> values =
      gpucheck::model_parameters(ParameterLayout::gpt_neox(p.config), p.config, rng);
  p.initial.assign(values.begin(), values.end());
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(p.config.vocab_size - 1));
  for (int s = 0; s < kSteps; ++s) {
    std::vector<int32_t> batch(static_cast<size_t>(kGlobal * kTokens));
    for (auto& id : batch) id = token(rng);
    p.batches.push_back(std::move(batch));
  }
  return p;
}

// Trains `state` (rank `rank` of `world`, `host` its host communicator) for kSteps steps and
// returns the losses; this rank's owned slices are written into `out` (whole-buffer sized).
void train(TrainingState& state, comm::Communicator& host, const Problem& p, int rank, int world, RunResult& out) {
  state.load([&](const std::string& dataset, int64_t begin, int64_t end, float* dst) {
    if (dataset == "parameters")
      std::copy(p.initial.begin() + begin, p.initial.begin() + end, dst);
    else
      std::fill(dst, dst + (end - begin), 0.0f);
  }, false);
  const int64_t n = state.update_end() - state.update_begin();
  const ParameterLayout layout = ParameterLayout::gpt_neox(p.config);
  std::vector<uint8_t> decay(static_cast<size_t>(n)), update(static_cast<size_t>(n), 1);
  for (const auto& view : layout.views()) {
    const int64_t lo = std::max(state.update_begin(), view.offset);
    const int64_t hi = std::min(state.update_end(), view.offset + view.numel());
    for (int64_t i = lo; i < hi; ++i) {
      decay[static_cast<size_t>(i - state.update_begin())] = view.shape.size() >= 2;
      update[static_cast<size_t>(i - state.update_begin())] = view.trainable;
    }
  }
  state.set_masks(decay, update);
  const int64_t lo = kGlobal * rank / world, hi = kGlobal * (rank + 1) / world;
  const int64_t largest = (kGlobal + world - 1) / world;
  for (int s = 0; s < kSteps; ++s) {
    StepInput in;
    in.ids = p.batches[static_cast<size_t>(s)].data() + lo * kTokens;
    in.local = hi - lo;
    in.global = kGlobal;
    in.tokens = kTokens;
    in.micro_batches = std::max<int64_t>(1, (largest + kMicroBatch - 1) / kMicroBatch);
    in.step = s + 1;
    // ε = 1 makes AdamW's step about lr · m (linear in the gradient): with the usual 1e-8, a
    // gradient that is rounding noise around zero (the key bias under softmax attention, for one)
    // becomes a full ±lr step whose sign differs between any two summation orders.
    in.lr = 3e-2;
    in.adamw.eps = 1.0;
    in.grad_clip = 1.0;
    const StepOutcome result = training_step(state, host, in);
    if (rank == 0) out.losses.push_back(result.loss);
  }
  const auto total = static_cast<size_t>(layout.total());
  state.with_owned([&](const float* params, const float* m, const float* v) {
    const auto begin = static_cast<size_t>(state.owned_begin()), count = static_cast<size_t>(state.owned_end()) - begin;
    for (auto [dst, src] : {std::pair{&out.params, params}, std::pair{&out.m, m}, std::pair{&out.v, v}}) {
      if (dst->size() != total) dst->resize(total);
      std::copy(src, src + count, dst->begin() + static_cast<std::ptrdiff_t>(begin));
    }
  });
}

RunResult run_cpu(const Problem& p) {
  comm::SingleCommunicator single;
  ShardedTraining<CpuOps<float>> state(p.config, 0, single, CpuOps<float>(), "CPU");
  RunResult out;
  train(state, single, p, 0, 1, out);
  return out;
}

// One rank on `device` at `stage`, the NCCL communicator bootstrapped over `host`.
template <typename T>
void run_gpu_rank(const Problem& p, int stage, comm::Communicator& host, int device, RunResult& out) {
  DJ_CUDA_CHECK(cudaSetDevice(device));
  cudaStream_t stream = nullptr;
  DJ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  {
    std::unique_ptr<comm::Communicator> nccl = comm::make_nccl_communicator(host, device, stream);
    nccl->set_timeout_seconds(120);
    ShardedTraining<CudaOps<T>> state(p.config, stage, *nccl, CudaOps<T>(stream, 120), "GPU");
    train(state, host, p, host.rank(), host.size(), out);
  }
  cudaStreamDestroy(stream);
}

template <typename T>
RunResult run_gpu(const Problem& p, int stage, int ranks) {
  RunResult out;
  if (ranks == 1) {
    comm::SingleCommunicator single;
    run_gpu_rank<T>(p, stage, single, 0, out);
    return out;
  }
  gpucheck::ThreadGroup group(ranks);
  std::vector<std::string> errors(static_cast<size_t>(ranks));
  std::vector<RunResult> parts(static_cast<size_t>(ranks));
  std::vector<std::thread> threads;
  for (int rank = 0; rank < ranks; ++rank)
    threads.emplace_back([&, rank] {
      gpucheck::ThreadHostCommunicator host(group, rank);
      try {
        run_gpu_rank<T>(p, stage, host, rank, parts[static_cast<size_t>(rank)]);
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(rank)] = e.what();
      }
    });
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < ranks; ++rank)
    if (!errors[static_cast<size_t>(rank)].empty())
      throw std::runtime_error("rank " + std::to_string(rank) + ": " + errors[static_cast<size_t>(rank)]);
  // Every rank filled its own slice of a whole-sized buffer: join them.
  out.losses = parts[0].losses;
  const ParameterLayout layout = ParameterLayout::gpt_neox(p.config);
  for (auto member : {&RunResult::params, &RunResult::m, &RunResult::v}) {
    std::vector<float>& joined = out.*member;
    joined.assign(static_cast<size_t>(layout.total()), 0.0f);
    for (int rank = 0; rank < ranks; ++rank) {
      const auto [begin, end] = flat_shard_range(layout.total(), rank, ranks);
      const std::vector<float>& part = parts[static_cast<size_t>(rank)].*member;
      std::copy(part.begin() + begin, part.begin() + end, joined.begin() + begin);
    }
  }
  return out;
}

double relative(const std::vector<float>& got, const std::vector<float>& want, int64_t begin, int64_t end) {
  double diff = 0.0, norm = 0.0;
  for (int64_t i = begin; i < end; ++i) {
    const double d = static_cast<double>(got[static_cast<size_t>(i)]) - want[static_cast<size_t>(i)];
    diff += d * d;
    norm += static_cast<double>(want[static_cast<size_t>(i)]) * want[static_cast<size_t>(i)];
  }
  if (!std::isfinite(diff)) return INFINITY;
  return norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

struct Row {
  std::string name;
  double loss = 0, params = 0, tensor = 0, moments = 0, threshold = 0;
  std::string worst, error;
  bool pass = false;
};

Row compare(const std::string& name, const RunResult& got, const RunResult& want, const ModelConfig& config,
            double threshold) {
  Row row;
  row.name = name;
  row.threshold = threshold;
  for (size_t s = 0; s < want.losses.size(); ++s) {
    const double e = s < got.losses.size() ? std::abs(got.losses[s] - want.losses[s]) / std::abs(want.losses[s]) : INFINITY;
    row.loss = std::max(row.loss, std::isfinite(e) ? e : INFINITY);
  }
  const ParameterLayout layout = ParameterLayout::gpt_neox(config);
  row.params = relative(got.params, want.params, 0, layout.total());
  row.moments = relative(got.m, want.m, 0, layout.total());
  for (const auto& view : layout.views()) {
    if (!view.trainable) continue;
    const double e = relative(got.params, want.params, view.offset, view.offset + view.numel());
    if (e > row.tensor || !std::isfinite(e)) {
      row.tensor = e;
      row.worst = view.name;
    }
  }
  row.pass = row.loss <= threshold && row.params <= threshold && row.tensor <= 10 * threshold &&
             std::isfinite(row.moments);
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  uint64_t seed = std::random_device{}();
  int max_ranks = 2;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--seed" && i + 1 < argc) {
      seed = std::strtoull(argv[++i], nullptr, 10);
    } else if (arg == "--max-ranks" && i + 1 < argc) {
      max_ranks = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--seed N] [--max-ranks N]\n", argv[0]);
      return 2;
    }
  }
  int devices = 0;
  const cudaError_t probe = cudaGetDeviceCount(&devices);
  if (probe != cudaSuccess || devices == 0) {
    std::fprintf(stderr, "train_check: no usable CUDA device (%s)\n",
                 probe != cudaSuccess ? cudaGetErrorString(probe) : "no device found");
    return 2;
  }
  const int ranks = std::min(devices, max_ranks);
  std::printf("train_check: %d device(s), seed %llu\n", devices, static_cast<unsigned long long>(seed));
  if (ranks < 2) std::printf("train_check: fewer than 2 GPUs: the 2-rank cases are skipped\n");
  std::fflush(stdout);

  std::vector<Row> rows;
  for (const bool dijiang : {true, false}) {
    const Problem problem = make_problem(dijiang, seed + (dijiang ? 1 : 2));
    const std::string model = dijiang ? "DiJiang" : "softmax tied";
    const RunResult reference = run_cpu(problem);
    const auto attempt = [&](const std::string& name, double threshold, auto run) {
      try {
        rows.push_back(compare(name, run(), reference, problem.config, threshold));
      } catch (const std::exception& e) {
        Row row;
        row.name = name;
        row.error = e.what();
        rows.push_back(row);
      }
    };
    for (int stage = 0; stage <= 3; ++stage) {
      attempt(model + ", 1 rank, stage " + std::to_string(stage) + ", fp32", 1e-5,
              [&] { return run_gpu<float>(problem, stage, 1); });
      if (stage == 0 || stage == 3)
        attempt(model + ", 1 rank, stage " + std::to_string(stage) + ", bf16", 2e-2,
                [&] { return run_gpu<__nv_bfloat16>(problem, stage, 1); });
      if (ranks >= 2)
        attempt(model + ", " + std::to_string(ranks) + " ranks, stage " + std::to_string(stage) + ", fp32", 1e-5,
                [&] { return run_gpu<float>(problem, stage, ranks); });
    }
  }

  bool ok = true;
  std::printf("\n%-38s %9s %9s %9s %9s %9s  %s\n", "case (against the CPU)", "loss", "params", "tensor", "moments",
              "bound", "result");
  for (const Row& r : rows) {
    ok = ok && r.pass;
    if (!r.error.empty()) {
      std::printf("%-38s FAIL  %s\n", r.name.c_str(), r.error.substr(0, 200).c_str());
      continue;
    }
    std::printf("%-38s %9.2e %9.2e %9.2e %9.2e %9.0e  %s%s\n", r.name.c_str(), r.loss, r.params, r.tensor, r.moments,
                r.threshold, r.pass ? "PASS" : "FAIL", r.pass ? "" : (" (worst tensor " + r.worst + ")").c_str());
  }
  std::printf("train_check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
