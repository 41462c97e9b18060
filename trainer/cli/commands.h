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

}  // namespace dj::cli
