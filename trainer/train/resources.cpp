#include "trainer/train/resources.h"

#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "trainer/checkpoint/atomic_write.h"
#include "trainer/train/memory_plan.h"

namespace dj {

namespace fs = std::filesystem;

int64_t resident_bytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  if (!(statm >> size >> resident)) return 0;
  return resident * sysconf(_SC_PAGESIZE);
}

int64_t peak_resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.starts_with("VmHWM:")) return std::stoll(line.substr(6)) * 1024;  // "VmHWM:   12345 kB"
  return 0;
}

void reset_peak_resident() { std::ofstream("/proc/self/clear_refs") << "5"; }

void report_run_resources(TrainingState& state, comm::Communicator& comm, const RunResources& run) {
  const Experiment& e = run.experiment;
  const int rank = run.rank, world = run.world;
  const int64_t steps = run.steps;
  if (const std::string device = state.device_memory_report(); !device.empty())
    spdlog::info("device memory: {}", device);
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  const StateMemory peak = state.peak_memory();
  comm::Traffic t = state.collectives().traffic();
  t.all_gather -= run.validation_traffic.all_gather;
  const RankMemory plan =
      plan_rank_memory(plan_input(e, run.config, world, static_cast<int>(e.zero_stage), run.on_gpu), rank);
  constexpr int kFields = 20;
  std::vector<double> table(static_cast<size_t>(world * kFields), 0.0);
  double* mine = table.data() + rank * kFields;
  const double values[kFields] = {static_cast<double>(peak.parameters), static_cast<double>(peak.gradients),
                                  static_cast<double>(peak.optimizer), static_cast<double>(peak.total()),
                                  static_cast<double>(usage.ru_maxrss) * 1024.0,
                                  static_cast<double>(t.all_reduce) / static_cast<double>(steps),
                                  static_cast<double>(t.reduce_scatter) / static_cast<double>(steps),
                                  static_cast<double>(t.all_gather) / static_cast<double>(steps),
                                  static_cast<double>(t.total()) / static_cast<double>(steps),
                                  static_cast<double>(peak_resident_bytes()),
                                  static_cast<double>(run.rss_outside_state),
                                  static_cast<double>(plan.parameters), static_cast<double>(plan.compute_copy),
                                  static_cast<double>(plan.gradients), static_cast<double>(plan.optimizer),
                                  static_cast<double>(plan.activations), static_cast<double>(plan.workspace),
                                  static_cast<double>(plan.total()), static_cast<double>(run.source_bytes_read),
                                  static_cast<double>(run.start_peak)};
  std::copy(values, values + kFields, mine);
  comm.all_reduce_host(table.data(), static_cast<int64_t>(table.size()));
  if (rank != 0) return;
  constexpr double kMiB = 1024.0 * 1024.0;
  nlohmann::json ranks = nlohmann::json::array();
  spdlog::info("resources per rank (ZeRO stage {}, {} ranks; MiB; communication per step):", e.zero_stage, world);
  spdlog::info("  rank  params  grads  optim  state  max RSS  at start  source read | all-reduce  reduce-scatter  all-gather  total");
  for (int r = 0; r < world; ++r) {
    const double* v = table.data() + r * kFields;
    spdlog::info("  {:4d} {:7.1f} {:6.1f} {:6.1f} {:6.1f} {:8.1f} {:9.1f} {:12.1f} | {:10.1f} {:15.1f} {:11.1f} {:6.1f}",
                 r, v[0] / kMiB, v[1] / kMiB, v[2] / kMiB, v[3] / kMiB, v[4] / kMiB, v[19] / kMiB, v[18] / kMiB,
                 v[5] / kMiB, v[6] / kMiB, v[7] / kMiB, v[8] / kMiB);
    ranks.push_back({{"rank", r},
                     {"state_bytes", {{"parameters", v[0]}, {"gradients", v[1]}, {"optimizer", v[2]}, {"total", v[3]}}},
                     {"max_rss_bytes", v[4]},
                     // The peak resident memory while training, and what was resident outside the
                     // state when training began: their difference is what the plan predicts.
                     {"max_rss_training_bytes", v[9]},
                     {"rss_outside_state_bytes", v[10]},
                     // Bytes of the model or checkpoint this rank read to start (its ZeRO slice
                     // at stage 3; 0 where nothing was read).
                     {"source_bytes_read", v[18]},
                     // The peak resident memory once the state was loaded, before training: the
                     // libraries, the state and what reading the source took.
                     {"max_rss_start_bytes", v[19]},
                     {"plan_bytes",
                      {{"parameters", v[11]}, {"compute_copy", v[12]}, {"gradients", v[13]}, {"optimizer", v[14]},
                       {"activations", v[15]}, {"workspace", v[16]}, {"total", v[17]}}},
                     {"bytes_per_step",
                      {{"all_reduce", v[5]}, {"reduce_scatter", v[6]}, {"all_gather", v[7]}, {"total", v[8]}}}});
  }
  const std::string text = nlohmann::json{{"zero_stage", e.zero_stage}, {"ranks", world}, {"steps", steps},
                                          {"per_rank", ranks}}
                               .dump(2) + "\n";
  write_file_atomically(fs::path(e.out_dir) / "resources.json",
                        [&](const fs::path& temp) { std::ofstream(temp) << text; });
}

}  // namespace dj
