// Each subcommand registers itself on the application; the callbacks throw dj::Error on bad input.
#pragma once
#include <CLI/CLI.hpp>

namespace dj::cli {

void register_inspect(CLI::App& app);
void register_eval(CLI::App& app);
void register_convert(CLI::App& app);
void register_export(CLI::App& app);
void register_bench(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_train(CLI::App& app);
void register_plot(CLI::App& app);
void register_preprocess(CLI::App& app);
void register_generate(CLI::App& app);
void register_eval_tasks(CLI::App& app);
// bench generate, a subcommand of bench (bench_generate.cpp).
void register_bench_generate(CLI::App& bench);
void register_bench_make_model(CLI::App& bench);

}  // namespace dj::cli
