// dijiang train CONFIG.yaml [a.b=c ...]: run a YAML experiment.
#include <spdlog/spdlog.h>

#include <cstdio>
#include <memory>
#include <new>

#include "comm/communicator.h"
#include "trainer/cli/commands.h"
#include "trainer/config/experiment.h"
#include "trainer/train/trainer.h"

namespace dj::cli {

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "train",
      "train or fine-tune a model from a YAML experiment (on a CUDA device when there is one; under mpirun or "
      "srun every rank runs it, see launch/mpirun.sh)");
  auto config = std::make_shared<std::string>();
  auto overrides = std::make_shared<std::vector<std::string>>();
  auto resume = std::make_shared<bool>(false);
  auto stop_after = std::make_shared<int64_t>(0);
  cmd->add_option("config", *config, "experiment YAML")->required();
  cmd->add_option("overrides", *overrides, "overrides KEY=VALUE (e.g. optimizer.lr=3e-4)");
  cmd->add_flag("--resume", *resume, "continue from the newest checkpoint in checkpoint.dir");
  cmd->add_option("--stop-after", *stop_after, "end this run with a checkpoint after N steps (resume later)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->callback([config, overrides, resume, stop_after] {
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
