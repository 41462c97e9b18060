// dijiang plot: training-loss curves of several runs (their metrics.jsonl) in one PNG.
#include <spdlog/spdlog.h>

#include <fstream>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/report/plot.h"

namespace dj::cli {

namespace {

PlotSeries read_run(const std::string& spec) {
  const size_t equals = spec.find('=');
  if (equals == std::string::npos || equals == 0) fail("--run '{}': expected NAME=DIRECTORY", spec);
  PlotSeries series{spec.substr(0, equals), {}, {}};
  const std::filesystem::path metrics = std::filesystem::path(spec.substr(equals + 1)) / "metrics.jsonl";
  std::ifstream in(metrics);
  if (!in) fail("{}: cannot open", metrics.string());
  int64_t line_number = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_number;
    const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) fail("{}:{}: not a JSON object", metrics.string(), line_number);
    if (!j.contains("loss")) continue;  // validation records
    series.x.push_back(j.at("step").get<double>());
    series.y.push_back(j.at("loss").get<double>());
  }
  if (series.x.empty()) fail("{}: no training records", metrics.string());
  return series;
}

}  // namespace

void register_plot(CLI::App& app) {
  auto* cmd = app.add_subcommand("plot", "training-loss curves of runs (metrics.jsonl) in one PNG");
  auto runs = std::make_shared<std::vector<std::string>>();
  auto out = std::make_shared<std::string>();
  auto title = std::make_shared<std::string>("Training loss");
  cmd->add_option("--run", *runs, "NAME=RUN_DIRECTORY (repeatable)")->required();
  cmd->add_option("--out", *out, "PNG to write")->required();
  cmd->add_option("--title", *title, "plot title");
  cmd->callback([runs, out, title] {
    std::vector<PlotSeries> series;
    for (const auto& run : *runs) series.push_back(read_run(run));
    write_line_plot(*out, {*title, "step", "training loss (nats/token)"}, series);
    spdlog::info("wrote {}", *out);
  });
}

}  // namespace dj::cli
