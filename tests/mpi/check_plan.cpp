// check_plan RESOURCES_JSON TOLERANCE: holds the memory plan a training run recorded in its
// resources.json (trainer/train/memory_plan.h) against what the run measured, per rank: the state
// bytes ShardedState allocated must equal the plan's state exactly, and the peak resident memory
// while training, less what was resident outside the state when training began, must be within
// TOLERANCE (relative) of the plan's total. Prints one line per rank; exits 1 on a failure.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: check_plan RESOURCES_JSON TOLERANCE\n");
    return 2;
  }
  std::ifstream in(argv[1]);
  const nlohmann::json resources = nlohmann::json::parse(in, nullptr, false);
  if (resources.is_discarded()) {
    std::fprintf(stderr, "check_plan: %s: not JSON\n", argv[1]);
    return 1;
  }
  const double tolerance = std::atof(argv[2]);
  bool ok = true;
  for (const auto& rank : resources.at("per_rank")) {
    const auto& plan = rank.at("plan_bytes");
    const double planned_state = plan.at("parameters").get<double>() + plan.at("compute_copy").get<double>() +
                                 plan.at("gradients").get<double>() + plan.at("optimizer").get<double>();
    const double state = rank.at("state_bytes").at("total").get<double>();
    const double measured =
        rank.at("max_rss_training_bytes").get<double>() - rank.at("rss_outside_state_bytes").get<double>();
    const double total = plan.at("total").get<double>();
    const double error = (measured - total) / total;
    const bool state_ok = state == planned_state, total_ok = std::abs(error) <= tolerance;
    std::printf("rank %d: state %.0f bytes (planned %.0f) %s; training peak %.1f MiB, planned %.1f MiB (%+.1f%%) %s\n",
                rank.at("rank").get<int>(), state, planned_state, state_ok ? "ok" : "FAIL", measured / 1048576.0,
                total / 1048576.0, 100.0 * error, total_ok ? "ok" : "FAIL");
    ok = ok && state_ok && total_ok;
  }
  return ok ? 0 : 1;
}
