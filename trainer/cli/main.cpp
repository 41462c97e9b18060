// dijiang: convert, evaluate and train GPT-NeoX models with DiJiang attention.
#include <omp.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <csignal>
#include <cstdio>
#include <exception>
#include <new>

#include "comm/communicator.h"
#include "kernels/backend.h"
#include "kernels/core/error.h"
#include "kernels/cpu/simd.h"
#include "trainer/cli/commands.h"

int main(int argc, char** argv) {
  // A file size limit (ulimit -f) should fail the write that exceeds it (EFBIG), which is reported
  // like any other write error, instead of killing the process with SIGXFSZ.
  std::signal(SIGXFSZ, SIG_IGN);
  // Logs go to stderr so that --json output on stdout stays machine-readable.
  spdlog::set_default_logger(spdlog::stderr_color_mt("dijiang"));
  spdlog::set_pattern("[%H:%M:%S] %^%l%$ %v");

  CLI::App app{"dijiang: GPT-NeoX (Pythia) models with DiJiang attention on CPUs and GPUs"};
  app.require_subcommand(1);
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return fmt::format("dijiang: error: {}\nRun with --help for more information.\n", e.what());
  });
  int threads = 0;
  std::string device = "auto";
  bool verbose = false, quiet = false;
  app.add_option("--threads", threads, "CPU threads (default: all cores, or OMP_NUM_THREADS)")
      ->check(CLI::Range(1, 4096));
  app.add_option("--device", device,
                 "where train, eval and bench model run: auto (a CUDA device when there is one), cpu or cuda")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_flag("-v,--verbose", verbose, "debug logging");
  app.add_flag("-q,--quiet", quiet, "warnings and errors only");
  // The version and the BLAS the process loaded: its build decides whether matrix products share
  // the program's OpenMP threads (kernels/backend.h). Declared after --threads, whose value is
  // stored before this runs (the parse-complete callback below comes after it).
  app.set_version_flag("--version", [&threads] {
    if (threads > 0) omp_set_num_threads(threads);
    std::string text = fmt::format("dijiang 0.1.0\nBLAS: {}\nSIMD: {}", dj::blas_description(),
                                   dj::cpu::simd_description(dj::cpu::simd_width()));
    const dj::BlasInfo blas = dj::blas_info();
    if (!blas.shares_openmp_pool())
      text += fmt::format("\nwarning: this is OpenBLAS's {} build, not the OpenMP build dijiang was linked with: "
                          "matrix products do not share the program's OpenMP threads (check LD_LIBRARY_PATH and "
                          "LD_PRELOAD)",
                          blas.build);
    return text;
  });
  app.parse_complete_callback([&] {
    spdlog::set_level(verbose ? spdlog::level::debug : quiet ? spdlog::level::warn : spdlog::level::info);
    if (threads > 0) omp_set_num_threads(threads);
    dj::request_device(device);
    dj::cpu::simd_width();  // reads DIJIANG_SIMD now, so that a bad value stops the command before it starts
  });

  dj::cli::register_inspect(app);
  dj::cli::register_eval(app);
  dj::cli::register_convert(app);
  dj::cli::register_export(app);
  dj::cli::register_bench(app);
  dj::cli::register_tokenize(app);
  dj::cli::register_train(app);
  dj::cli::register_plot(app);
  dj::cli::register_preprocess(app);
  dj::cli::register_generate(app);
  dj::cli::register_eval_tasks(app);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // Usage errors exit with 2 (as most command-line tools do); --help and --version with 0.
    return app.exit(e) == 0 ? 0 : 2;
  } catch (const dj::comm::JobError& e) {
    if (e.report()) std::fprintf(stderr, "dijiang: error: %s\n", e.what());
    return 1;
  } catch (const dj::Error& e) {
    std::fprintf(stderr, "dijiang: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "dijiang: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dijiang: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
