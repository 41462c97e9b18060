// dijiang train CONFIG.yaml [a.b=c ...]: run a YAML experiment.
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <cstdio>
#include <memory>
#include <new>

#include "comm/communicator.h"
#include "trainer/cli/commands.h"
#include "trainer/config/experiment.h"
#include "trainer/train/trainer.h"
#include "trainer/train/gpu.h"
#include "trainer/train/memory_plan.h"
#include "trainer/model/source.h"
#include "kernels/backend.h"
#include "kernels/core/error.h"

namespace dj::cli {

namespace {

// dijiang train CONFIG --plan: the model's config (after the experiment's conversion) and the
// memory plan of every stage, for a GPU (given --gpu-memory, or a device present) or the CPU.
void print_plan(const std::string& file, const std::vector<std::string>& overrides, int ranks, double gpu_gib) {
  const Experiment e = load_experiment(file, overrides);
  ModelConfig config = read_model_config(e.model_source);
  if (e.converts_attention() && !config.is_converted()) {
    config.attention = e.converts_to_linear() ? AttentionKind::Linear : AttentionKind::DiJiang;
    config.dijiang = e.conversion_options();
    config.linear = e.linear_options();
  }
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const bool gpu = gpu_gib > 0 || select_backend().backend == Backend::CUDA;
  int64_t capacity = 0;
  std::string where;
  if (gpu_gib > 0) {
    capacity = static_cast<int64_t>(gpu_gib * kGiB);
  } else if (gpu) {
    capacity = gpu::device_memory().total;
    where = " (device 0's memory)";
  } else {
    capacity = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE) / ranks;
    where = fmt::format(" (this machine's memory{})", ranks > 1 ? fmt::format(" shared by {} ranks", ranks) : "");
  }
  std::printf("model %s: %s attention, %.1fM parameters\n", e.model_source.c_str(),
              config.attention_name().c_str(), static_cast<double>(config.parameter_count()) / 1e6);
  std::printf("%s", plan_table(e, config, ranks, gpu, capacity).c_str());
  if (!where.empty()) std::printf("capacity%s\n", where.c_str());
}

}  // namespace

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train",
      "train or fine-tune a model from a YAML experiment (on a CUDA device when there is one; under mpirun or "
      "srun every rank runs it, see launch/mpirun.sh)");
  auto config = std::make_shared<std::string>();
  auto overrides = std::make_shared<std::vector<std::string>>();
  auto resume = std::make_shared<bool>(false);
  auto stop_after = std::make_shared<int64_t>(0);
  auto list_keys = std::make_shared<bool>(false);
  cmd->add_option("config", *config, "experiment YAML (its keys: --list-keys, or below)");
  cmd->add_option("overrides", *overrides, "overrides KEY=VALUE (e.g. optimizer.lr=3e-4)");
  cmd->add_flag("--resume", *resume, "continue from the newest checkpoint in checkpoint.dir");
  cmd->add_option("--stop-after", *stop_after, "end this run with a checkpoint after N steps (resume later)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  auto plan = std::make_shared<bool>(false);
  auto plan_ranks = std::make_shared<int>(1);
  auto gpu_memory = std::make_shared<double>(0.0);
  cmd->add_flag("--plan", *plan,
                "print the memory per rank of every ZeRO stage (parameters, bf16 copy, gradients, optimizer state, "
                "activations) and which stages fit, without allocating or training");
  cmd->add_option("--ranks", *plan_ranks, "with --plan: the number of ranks (default 1)")->check(CLI::Range(1, 1 << 20));
  cmd->add_option("--gpu-memory", *gpu_memory,
                  "with --plan: GiB per GPU (default: device 0's; without a GPU and without this, the plan is the "
                  "CPU's)")
      ->check(CLI::Range(0.1, 1e6));
  cmd->add_flag("--list-keys", *list_keys,
                "print every YAML key of an experiment with its type, default, allowed values and help, and exit");
  cmd->footer("YAML keys of an experiment (also as KEY=VALUE overrides):\n" + experiment_keys_help());
  cmd->callback([config, overrides, resume, stop_after, plan, plan_ranks, gpu_memory, list_keys] {
    if (*list_keys) {
      std::printf("%s", experiment_keys_help().c_str());
      return;
    }
    if (config->empty()) fail("train needs an experiment: dijiang train CONFIG.yaml (its keys: --list-keys)");
    if (*plan) {
      print_plan(*config, *overrides, *plan_ranks, *gpu_memory);
      return;
    }
    // Under mpirun or srun every rank runs this; alone, no MPI runtime is touched.
    const std::unique_ptr<comm::Communicator> comm = comm::make_host_communicator();
    const int rank = comm->rank(), ranks = comm->size();
    if (rank != 0) {
      // Rank 0 alone logs progress; the others speak only of their own failures.
      spdlog::set_level(spdlog::level::err);
      spdlog::set_pattern(fmt::format("[%H:%M:%S] [rank {}] %^%l%$ %v", rank));
    }
    try {
      Experiment experiment;
      std::string error;
      try {
        experiment = load_experiment(*config, *overrides);
      } catch (const Error& e) {
        error = e.what();
      }
      comm->agree(error);
      if (rank == 0)
        std::fprintf(stderr, "--- resolved experiment (%s)\n%s\n---\n", config->c_str(),
                     experiment_to_yaml(experiment).c_str());
      const TrainOutcome outcome = train(experiment, *resume, *stop_after, comm.get());
      spdlog::info("{} at step {}: last training loss {:.4f}; checkpoint {}",
                   outcome.interrupted ? "stopped" : "finished", outcome.step, outcome.last_loss,
                   outcome.checkpoint.string());
    } catch (const comm::JobError&) {
      throw;  // every rank has it; MPI finalises as the communicator goes
    } catch (const std::exception& e) {
      if (ranks == 1) throw;
      // One rank failed on its own while the others may be waiting for it in a collective: name
      // it and end the whole job now.
      std::fprintf(stderr, "dijiang: error: rank %d of %d (%s): %s\n", rank, ranks, comm->host().c_str(),
                   dynamic_cast<const std::bad_alloc*>(&e) ? "out of memory" : e.what());
      std::fflush(stderr);
      comm->abort(1);
    }
  });
}

}  // namespace dj::cli
