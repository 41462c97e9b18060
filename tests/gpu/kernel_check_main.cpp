// kernel_check: runs the cases that the check files register (DJ_GPU_CHECK, DJ_GPU_BENCH; see
// check.h) and prints a table of checks, then one of benchmarks, last.
//
// Usage: kernel_check [--seed N] [--filter SUBSTR] [--bench | --bench-only] [--case-timeout S]
//                     [--time-limit S] [--list]
//   --seed N          seed of the random inputs (default: from the clock; printed either way).
//                     Each case draws from its own generator, seeded from N and its name, so
//                     `--seed N --filter NAME` reproduces one case's inputs.
//   --filter SUBSTR   run only the cases whose name contains SUBSTR (several: SUBSTR,SUBSTR,...,
//                     the cases matching any of them).
//   --bench           run the benchmarks too, after every check (not under the CUDA emulation,
//                     which skips the benchmarks).
//   --bench-only      run the benchmarks alone.
//   --case-timeout S  give up on the whole run when one case takes more than S seconds (default
//                     60): a hung kernel then still leaves the tables of what ran.
//   --time-limit S    the same for the whole run (default: none): a case still running at S
//                     seconds ends the run; cases not started by then are reported as not run.
//   --budget S        start no case after S seconds; the cases left are listed as skipped and do
//                     not fail the run (for runs that cover as much as a time slot allows, such as
//                     the sanitizer's).
//   --list            print the registered cases and exit.
// Exit status: 0 when every check passed, 1 when one failed (or a case threw, or nothing
// matched), 2 when no CUDA device can be used or the arguments are wrong.
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "check.h"
#include "registry.h"

namespace {

using dj::gpucheck::BenchRow;
using dj::gpucheck::CheckRow;
using dj::gpucheck::Context;
using dj::gpucheck::RegisteredCase;

struct Options {
  uint64_t seed = 0;
  bool seed_given = false;
  std::string filter;
  bool bench = false;
  bool bench_only = false;
  bool list = false;
  double case_timeout_s = 60.0;
  double time_limit_s = 0.0;  // 0: none
  double budget_s = 0.0;      // 0: none
};

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr,
               "kernel_check: %s\nusage: kernel_check [--seed N] [--filter SUBSTR] [--bench | "
               "--bench-only] [--case-timeout S] [--time-limit S] [--budget S] [--list]\n",
               message.c_str());
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage_error(arg + " needs a value");
      return argv[++i];
    };
    try {
      if (arg == "--seed") {
        options.seed = std::stoull(value());
        options.seed_given = true;
      } else if (arg == "--filter") {
        options.filter = value();
      } else if (arg == "--bench") {
        options.bench = true;
      } else if (arg == "--bench-only") {
        options.bench = options.bench_only = true;
      } else if (arg == "--case-timeout") {
        options.case_timeout_s = std::stod(value());
      } else if (arg == "--time-limit") {
        options.time_limit_s = std::stod(value());
      } else if (arg == "--budget") {
        options.budget_s = std::stod(value());
      } else if (arg == "--list") {
        options.list = true;
      } else if (arg == "--help" || arg == "-h") {
        std::printf(
            "usage: kernel_check [--seed N] [--filter SUBSTR] [--bench | --bench-only] "
            "[--case-timeout S] [--time-limit S] [--budget S] [--list]\n");
        std::exit(0);
      } else {
        usage_error("unknown argument " + arg);
      }
    } catch (const std::logic_error&) {  // std::stoull / std::stod on a malformed number
      usage_error("bad value for " + arg);
    }
  }
  return options;
}

// Whether `name` contains one of the comma-separated substrings of `filter`.
bool matches(const std::string& name, const std::string& filter) {
  size_t begin = 0;
  for (;;) {
    const size_t end = filter.find(',', begin);
    const std::string part = filter.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    if (!part.empty() && name.find(part) != std::string::npos) return true;
    if (end == std::string::npos) return false;
    begin = end + 1;
  }
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The seed of one case: the run's seed mixed with the case's name (FNV-1a), so a case's inputs do
// not depend on which other cases ran before it.
uint64_t case_seed(uint64_t seed, const std::string& name) {
  uint64_t hash = 0xCBF29CE484222325ull;
  for (unsigned char c : name) hash = (hash ^ c) * 0x100000001B3ull;
  return splitmix64(seed ^ hash);
}

std::string format_number(double value, const char* format) {
  if (value == 0.0) return "-";
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, format, value);
  return buffer;
}

// A plain text table: columns padded to their widest cell, the last column (the note) unpadded.
void print_table(const std::vector<std::string>& header,
                 const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width(header.size());
  for (size_t c = 0; c < header.size(); ++c) width[c] = header[c].size();
  for (const auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  auto print_row = [&](const std::vector<std::string>& row) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(width[c] - row[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    std::printf("%s\n", line.c_str());
  };
  print_row(header);
  std::vector<std::string> rule;
  for (size_t c = 0; c < header.size(); ++c) rule.push_back(std::string(width[c], '-'));
  print_row(rule);
  for (const auto& row : rows) print_row(row);
}

struct Tally {
  size_t checks = 0, failed = 0, benches = 0;
};

// The tables, from the rows of `ctx` (read under the results lock) and the case each row came
// from (`case_of_check`; rows past its end come from `current_case`, the one still running).
Tally print_results(const Context& ctx, const std::vector<std::string>& case_of_check,
                    bool bench_mode, const std::string& current_case = "") {
  std::lock_guard<std::mutex> lock(dj::gpucheck::results_mutex());
  Tally tally;
  const auto& checks = ctx.checks();
  const auto& benches = ctx.benches();
  tally.checks = checks.size();
  tally.benches = benches.size();
  if (!checks.empty()) {
    std::vector<std::vector<std::string>> rows;
    for (size_t i = 0; i < checks.size(); ++i) {
      const CheckRow& r = checks[i];
      if (!r.pass) ++tally.failed;
      char error[32], threshold[32];
      std::snprintf(error, sizeof error, "%.3g", r.error);
      std::snprintf(threshold, sizeof threshold, "%.2g", r.threshold);
      rows.push_back({i < case_of_check.size() ? case_of_check[i] : current_case, r.name, error,
                      threshold, r.pass ? "PASS" : "FAIL", r.note});
    }
    std::printf("\n== kernel checks\n");
    print_table({"case", "check", "error", "threshold", "result", "note"}, rows);
  }
  if (bench_mode) {
    std::vector<std::vector<std::string>> rows;
    for (const BenchRow& b : benches) {
      char ms[32];
      std::snprintf(ms, sizeof ms, "%.4g", b.ms);
      const std::string percent =
          b.floor_ms > 0.0 && b.ms > 0.0 ? format_number(100.0 * b.floor_ms / b.ms, "%.0f%%") : "-";
      rows.push_back({b.name, ms, format_number(b.tflops, "%.1f"), format_number(b.gbps, "%.0f"),
                      format_number(b.floor_ms, "%.4g"), percent, b.note});
    }
    std::printf("\n== benchmarks (median of timed calls, L2 flushed before each)\n");
    print_table({"name", "ms", "TFLOP/s", "GB/s", "floor ms", "% of floor", "note"}, rows);
  }
  std::printf("\nkernel_check: %zu checks, %zu failed; %zu benchmarks\n", tally.checks,
              tally.failed, tally.benches);
  std::fflush(stdout);
  return tally;
}

// Ends the process when one case runs longer than its limit, or past the run's time limit: a hung
// kernel cannot be interrupted, but the tables of everything before it still get printed.
class Watchdog {
 public:
  Watchdog(double case_limit_s, double run_limit_s, const Context& ctx,
           const std::vector<std::string>& case_of_check, bool bench_mode)
      : case_limit_s_(case_limit_s),
        run_limit_s_(run_limit_s),
        run_started_(std::chrono::steady_clock::now()),
        ctx_(ctx),
        case_of_check_(case_of_check),
        bench_mode_(bench_mode),
        thread_([this] { watch(); }) {}
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    wake_.notify_all();
    thread_.join();
  }
  void start(const std::string& name) {
    std::lock_guard<std::mutex> lock(mutex_);
    current_ = name;
    started_ = std::chrono::steady_clock::now();
  }
  void stop() {
    std::lock_guard<std::mutex> lock(mutex_);
    current_.clear();
  }
  // Whether the run's time limit has passed (no further case should start).
  bool out_of_time() const {
    return run_limit_s_ > 0 && seconds_since(run_started_) > run_limit_s_;
  }

 private:
  void watch() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!done_) {
      wake_.wait_for(lock, std::chrono::milliseconds(500));
      if (done_ || current_.empty()) continue;
      const char* limit = nullptr;
      double seconds = 0;
      if (case_limit_s_ > 0 && seconds_since(started_) > case_limit_s_) {
        limit = "--case-timeout";
        seconds = case_limit_s_;
      } else if (out_of_time()) {
        limit = "--time-limit";
        seconds = run_limit_s_;
      }
      if (limit != nullptr) {
        std::printf(
            "\nkernel_check: case %s still running at %.0f s (%s); stopping here: the "
            "cases after it did not run\n",
            current_.c_str(), seconds, limit);
        print_results(ctx_, case_of_check_, bench_mode_, current_);
        std::printf("kernel_check: FAIL (timeout in %s)\n", current_.c_str());
        std::fflush(stdout);
        std::_Exit(1);
      }
    }
  }

  static double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  }

  double case_limit_s_, run_limit_s_;
  std::chrono::steady_clock::time_point run_started_;
  const Context& ctx_;
  const std::vector<std::string>& case_of_check_;
  bool bench_mode_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool done_ = false;
  std::string current_;
  std::chrono::steady_clock::time_point started_;
  std::thread thread_;  // last: started once every other member is ready
};

bool probe_device() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess || count == 0) {
    std::fprintf(stderr,
                 "kernel_check: no usable CUDA device (%s); the kernel checks need a GPU: run "
                 "tests/gpu/run.sh on a GPU machine\n",
                 status != cudaSuccess ? cudaGetErrorString(status) : "no device found");
    return false;
  }
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess || cudaSetDevice(0) != cudaSuccess) {
    std::fprintf(stderr, "kernel_check: CUDA device 0 cannot be used\n");
    return false;
  }
  int driver = 0, runtime = 0, memory_khz = 0, bus_bits = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cudaDeviceGetAttribute(&memory_khz, cudaDevAttrMemoryClockRate, 0);
  cudaDeviceGetAttribute(&bus_bits, cudaDevAttrGlobalMemoryBusWidth, 0);
  std::printf(
      "device 0 of %d: %s, compute capability %d.%d, %d SMs, %.1f GiB, L2 %.0f MiB, "
      "nominal memory bandwidth %.0f GB/s; driver %d, runtime %d\n",
      count, p.name, p.major, p.minor, p.multiProcessorCount,
      static_cast<double>(p.totalGlobalMem) / (1 << 30),
      static_cast<double>(p.l2CacheSize) / (1 << 20),
      2.0 * memory_khz * 1e3 * (bus_bits / 8.0) / 1e9, driver, runtime);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = parse(argc, argv);
  const auto& all_cases = dj::gpucheck::registered_cases();

  // Every selected check, in registration order, then every selected benchmark.
  std::vector<const RegisteredCase*> cases;
  std::map<std::string, int> seen;
  for (const RegisteredCase& c : all_cases)
    if (++seen[c.name] == 2)
      std::fprintf(stderr, "kernel_check: warning: case %s is registered twice\n", c.name.c_str());
  for (bool benches : {false, true})
    for (const RegisteredCase& c : all_cases) {
      if (c.is_bench != benches) continue;
      if (!options.filter.empty() && !matches(c.name, options.filter)) continue;
      if (c.is_bench ? !options.bench : options.bench_only) continue;
      if (c.is_bench && dj::gpucheck::kEmulated) continue;
      cases.push_back(&c);
    }
  if (options.list) {
    for (const RegisteredCase& c : all_cases)
      std::printf("%s%s\n", c.name.c_str(), c.is_bench ? "  (benchmark)" : "");
    return 0;
  }
  if (!probe_device()) return 2;
  if (options.bench && dj::gpucheck::kEmulated) {
    std::printf("kernel_check: the benchmarks are skipped under the CUDA emulation (no real timing)\n");
    if (options.bench_only) return 0;
  }

  uint64_t seed = options.seed;
  if (!options.seed_given)
    seed = splitmix64(
        static_cast<uint64_t>(std::chrono::system_clock::now().time_since_epoch().count()));
  std::printf("seed %llu (repeat with --seed %llu)\n", static_cast<unsigned long long>(seed),
              static_cast<unsigned long long>(seed));
  if (cases.empty()) {
    std::printf(
        "kernel_check: no case to run (%zu registered; filter \"%s\"%s)\nkernel_check: FAIL\n",
        all_cases.size(), options.filter.c_str(), options.bench_only ? ", benchmarks only" : "");
    return 1;
  }

  Context ctx(seed);
  std::vector<std::string> case_of_check;  // the case each row of ctx.checks() came from
  bool context_lost = false;
  int skipped = 0;
  {
    Watchdog watchdog(options.case_timeout_s, options.time_limit_s, ctx, case_of_check,
                      options.bench);
    if (cudaStreamCreate(&ctx.stream) != cudaSuccess) {  // blocking: ordered with cudaMemcpy
      std::fprintf(stderr, "kernel_check: cudaStreamCreate failed\n");
      return 2;
    }
    std::string lost_in;
    const auto run_start = std::chrono::steady_clock::now();
    for (const RegisteredCase* c : cases) {
      if (options.budget_s > 0 &&
          std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count() >= options.budget_s) {
        std::printf("[ skip  ] %s (--budget %g s reached)\n", c->name.c_str(), options.budget_s);
        ++skipped;
        continue;
      }
      const size_t checks_before = ctx.checks().size();
      const size_t benches_before = ctx.benches().size();
      std::vector<std::string> failures;
      if (context_lost) {
        failures.push_back("not run: the CUDA context was lost in case " + lost_in);
      } else if (watchdog.out_of_time()) {
        failures.push_back("not run: --time-limit reached");
      } else {
        std::printf("[ %s ] %s\n", c->is_bench ? "bench" : "check", c->name.c_str());
        std::fflush(stdout);
        ctx.rng.seed(case_seed(seed, c->name));
        const auto start = std::chrono::steady_clock::now();
        watchdog.start(c->name);
        try {
          c->fn(ctx);
        } catch (const std::exception& e) {
          failures.push_back(std::string("exception: ") + e.what());
        } catch (...) {
          failures.push_back("exception of unknown type");
        }
        // Asynchronous errors belong to this case; a sticky one (an illegal address, say) leaves
        // the context unusable, and the remaining cases are reported as not run.
        cudaError_t status = cudaDeviceSynchronize();
        if (status == cudaSuccess) status = cudaGetLastError();
        if (status != cudaSuccess) {
          failures.push_back(std::string("CUDA error after the case: ") + cudaGetErrorName(status) +
                             " (" + cudaGetErrorString(status) + ")");
          cudaGetLastError();
          if (cudaDeviceSynchronize() != cudaSuccess) {
            context_lost = true;
            lost_in = c->name;
          }
        }
        watchdog.stop();
        const size_t recorded = c->is_bench ? ctx.benches().size() - benches_before
                                            : ctx.checks().size() - checks_before;
        if (failures.empty() && recorded == 0) failures.push_back("the case recorded no result");
        std::printf(
            "  (%.1f s)\n",
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
      }
      for (const std::string& f : failures) ctx.expect(c->name, false, f);
      std::lock_guard<std::mutex> lock(dj::gpucheck::results_mutex());
      case_of_check.resize(ctx.checks().size(), c->name);
    }
  }
  const Tally tally = print_results(ctx, case_of_check, options.bench);
  if (skipped > 0) std::printf("kernel_check: %d case(s) skipped by --budget\n", skipped);
  if (!context_lost) cudaStreamDestroy(ctx.stream);
  const bool ok = tally.failed == 0;
  std::printf("kernel_check: %s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
