// dijiang train CONFIG.yaml [a.b=c ...]: run a YAML experiment.
#include <spdlog/spdlog.h>

#include <cstdio>

#include "trainer/cli/commands.h"
#include "trainer/config/experiment.h"
#include "trainer/train/trainer.h"

namespace dj::cli {

void register_train(CLI::App& app) {
  auto* cmd = app.add_subcommand("train", "train or fine-tune a model from a YAML experiment");
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
    const Experiment experiment = load_experiment(*config, *overrides);
    std::fprintf(stderr, "--- resolved experiment (%s)\n%s\n---\n", config->c_str(), experiment_to_yaml(experiment).c_str());
    const TrainOutcome outcome = train(experiment, *resume, *stop_after);
    spdlog::info("{} at step {}: last training loss {:.4f}; checkpoint {}", outcome.interrupted ? "stopped" : "finished",
                 outcome.step, outcome.last_loss, outcome.checkpoint.string());
  });
}

}  // namespace dj::cli
