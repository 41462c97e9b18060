// dijiang eval-tasks: zero-shot scores of a model on multiple-choice and cloze tasks
// (trainer/model/zero_shot.h), with lm-evaluation-harness's definitions.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/model_options.h"
#include "trainer/model/zero_shot.h"

namespace dj::cli {

namespace {

struct EvalTasksOptions {
  std::string model, tokenizer;
  Precision precision = Precision::F32;
  std::vector<std::string> tasks;
  int64_t limit = 0;
  bool json = false;
};

// "[#########           ] 45/100 piqa" on stderr, redrawn in place.
void draw_progress(const std::string& name, int64_t done, int64_t total) {
  constexpr int kWidth = 30;
  const auto filled = static_cast<int>(kWidth * done / std::max<int64_t>(total, 1));
  std::fprintf(stderr, "\r[%s%s] %lld/%lld %s", std::string(static_cast<size_t>(filled), '#').c_str(),
               std::string(static_cast<size_t>(kWidth - filled), ' ').c_str(), static_cast<long long>(done),
               static_cast<long long>(total), name.c_str());
  if (done == total) std::fprintf(stderr, "\n");
  std::fflush(stderr);
}

void run_eval_tasks(const EvalTasksOptions& o) {
  std::vector<Task> tasks;
  for (const std::string& spec : o.tasks) {
    const size_t eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      fail("--task {}: expected NAME=FILE.jsonl", spec);
    const std::string name = spec.substr(0, eq);
    for (const Task& t : tasks)
      if (t.name == name) fail("--task {}: the name {} is given twice", spec, name);
    tasks.push_back(read_task_file(name, spec.substr(eq + 1), o.limit));
  }
  const Tokenizer tokenizer = Tokenizer::from_file(tokenizer_for(o.model, o.tokenizer));
  ModelSource source = read_model_source(o.model);
  const int32_t eos = end_of_text_id(source);
  const std::unique_ptr<Decoder> decoder = open_decoder(std::move(source), o.precision, "scoring");
  const bool bar = isatty(STDERR_FILENO) != 0;
  nlohmann::ordered_json report = {{"tasks", nlohmann::ordered_json::object()}};
  std::vector<std::pair<std::string, TaskResult>> results;
  for (const Task& task : tasks) {
    const auto start = std::chrono::steady_clock::now();
    const TaskResult r = score_task(*decoder, tokenizer, task, eos, [&](int64_t done, int64_t total) {
      if (bar) draw_progress(task.name, done, total);
    });
    spdlog::info("{}: {} items in {:.1f} s", task.name, r.n,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    nlohmann::ordered_json entry = {{"n", r.n}, {"acc", r.acc}};
    if (r.cloze) {
      entry["perplexity"] = r.perplexity;
    } else {
      entry["acc_stderr"] = r.acc_stderr;
      entry["acc_norm"] = r.acc_norm;
      entry["acc_norm_stderr"] = r.acc_norm_stderr;
    }
    report["tasks"][task.name] = entry;
    results.emplace_back(task.name, r);
  }
  if (o.json) {
    std::printf("%s\n", report.dump().c_str());
    return;
  }
  std::printf("%-20s %6s %18s %18s %12s\n", "task", "n", "acc", "acc_norm", "perplexity");
  for (const auto& [name, r] : results) {
    if (r.cloze)
      std::printf("%-20s %6lld %18.4f %18s %12.3f\n", name.c_str(), static_cast<long long>(r.n), r.acc, "-",
                  r.perplexity);
    else
      std::printf("%-20s %6lld %9.4f ± %6.4f %9.4f ± %6.4f %12s\n", name.c_str(), static_cast<long long>(r.n), r.acc,
                  r.acc_stderr, r.acc_norm, r.acc_norm_stderr, "-");
  }
}

}  // namespace

void register_eval_tasks(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval-tasks", "zero-shot accuracy on multiple-choice and cloze tasks (JSONL files)");
  auto o = std::make_shared<EvalTasksOptions>();
  cmd->add_option("--model", o->model, "Hugging Face directory or native checkpoint")->required();
  cmd->add_option("--task", o->tasks,
                  "NAME=FILE.jsonl, repeatable; lines {\"context\", \"choices\", \"gold\"} or {\"context\", \"continuation\"}")
      ->required();
  cmd->add_option("--limit", o->limit, "score the first N items of each task")->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  cmd->add_flag("--json", o->json,
                "print one JSON line {\"tasks\": {NAME: {\"n\", \"acc\", \"acc_stderr\", \"acc_norm\", \"acc_norm_stderr\"}}} "
                "(cloze tasks: n, acc, perplexity)");
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the model directory's, else GPT-NeoX's)");
  add_choice(cmd, "--precision", o->precision, "f32 (default), f64 (on the CPU) or bf16 (on a GPU)");
  cmd->callback([o] { run_eval_tasks(*o); });
}

}  // namespace dj::cli
