// dijiang plot: training-loss or validation curves of several runs (their metrics.jsonl) in one PNG.
#include <spdlog/spdlog.h>

#include <cctype>
#include <fstream>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/report/plot.h"

namespace dj::cli {

namespace {

// The metric a curve follows: the language-model training loss (steps of attention-transfer stages
// left out: theirs is another loss), or the validation loss or perplexity.
struct Metric {
  const char* name;
  const char* field;
  const char* axis;
};
constexpr Metric kMetrics[] = {{"loss", "loss", "training loss (nats/token)"},
                               {"valid_loss", "valid_loss", "validation loss (nats/token)"},
                               {"valid_ppl", "valid_ppl", "validation perplexity"}};

PlotSeries read_run(const std::string& spec, const Metric& metric) {
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
    if (!j.contains(metric.field) || !j.at(metric.field).is_number() || !j.contains("step")) continue;
    if (j.value("objective", std::string("lm")) == "attention_transfer") continue;
    series.x.push_back(j.at("step").get<double>());
    series.y.push_back(j.at(metric.field).get<double>());
  }
  if (series.x.empty()) fail("{}: no {} records", metrics.string(), metric.name);
  return series;
}

}  // namespace

void register_plot(CLI::App& app) {
  auto* cmd = app.add_subcommand("plot", "training-loss or validation curves of runs (metrics.jsonl) in one PNG");
  auto runs = std::make_shared<std::vector<std::string>>();
  auto out = std::make_shared<std::string>();
  auto title = std::make_shared<std::string>();
  auto metric = std::make_shared<std::string>("loss");
  cmd->add_option("--run", *runs, "NAME=RUN_DIRECTORY (repeatable)")->required();
  cmd->add_option("--out", *out, "PNG to write")->required();
  cmd->add_option("--title", *title, "plot title (default: the metric's name)");
  cmd->add_option("--metric", *metric,
                  "loss: the language-model training loss (attention-transfer steps left out); valid_loss or "
                  "valid_ppl: the validation passes")
      ->check(CLI::IsMember({"loss", "valid_loss", "valid_ppl"}));
  cmd->callback([runs, out, title, metric] {
    const Metric* chosen = &kMetrics[0];
    for (const Metric& m : kMetrics)
      if (*metric == m.name) chosen = &m;
    std::vector<PlotSeries> series;
    for (const auto& run : *runs) series.push_back(read_run(run, *chosen));
    const std::string axis = chosen->axis;
    write_line_plot(*out, {title->empty() ? std::string(1, static_cast<char>(std::toupper(axis[0]))) + axis.substr(1) : *title,
                           "step", axis}, series);
    spdlog::info("wrote {}", *out);
  });
}

}  // namespace dj::cli
