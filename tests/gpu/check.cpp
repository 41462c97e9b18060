// The kernel-check harness declared in check.h: inputs, poisoning, comparisons, timing and the
// registry of cases. Host code only; kernel_check_main.cpp runs the cases.
#include "check.h"

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "registry.h"

namespace dj::gpucheck {

namespace {

std::string strprintf(const char* format, ...) __attribute__((format(printf, 1, 2)));
std::string strprintf(const char* format, ...) {
  char buffer[1024];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  return buffer;
}

std::string describe(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")";
}

void append_note(std::string& note, const std::string& detail) {
  if (!note.empty()) note += "; ";
  note += detail;
}

// One line per recorded row as it happens, so a log cut short by a hang still shows how far the
// run got.
void print_row(const CheckRow& row) {
  std::printf("  %-4s %-48s error %-10.3g threshold %-8.2g %s\n", row.pass ? "PASS" : "FAIL",
              row.name.c_str(), row.error, row.threshold, row.note.c_str());
  std::fflush(stdout);
}

template <typename T>
CheckRow compare_values(const std::string& name, const std::vector<T>& got,
                        const std::vector<T>& expected, double threshold, const std::string& note) {
  CheckRow row{name, 0.0, threshold, false, note};
  if (got.size() != expected.size()) {
    row.error = std::numeric_limits<double>::infinity();
    append_note(row.note, strprintf("size %zu, expected %zu", got.size(), expected.size()));
    return row;
  }
  constexpr size_t kNone = std::numeric_limits<size_t>::max();
  double diff2 = 0.0, ref2 = 0.0, worst = -1.0;
  size_t worst_at = 0, bad_got = 0, first_bad_got = kNone, bad_expected = 0,
         first_bad_expected = kNone;
  for (size_t i = 0; i < got.size(); ++i) {
    const double g = static_cast<double>(got[i]);
    const double e = static_cast<double>(expected[i]);
    if (!std::isfinite(e)) {
      if (bad_expected++ == 0) first_bad_expected = i;
      continue;
    }
    if (!std::isfinite(g)) {
      if (bad_got++ == 0) first_bad_got = i;
      continue;
    }
    const double d = g - e;
    diff2 += d * d;
    ref2 += e * e;
    if (std::abs(d) > worst) {
      worst = std::abs(d);
      worst_at = i;
    }
  }
  if (bad_expected > 0 || bad_got > 0) {
    row.error = std::numeric_limits<double>::quiet_NaN();
    if (bad_expected > 0)
      append_note(row.note, strprintf("the reference has %zu non-finite values (first at [%zu])",
                                      bad_expected, first_bad_expected));
    if (bad_got > 0)
      append_note(
          row.note,
          strprintf("%zu of %zu values non-finite (first at [%zu] = %g; NaN there "
                    "may be an element never written)",
                    bad_got, got.size(), first_bad_got, static_cast<double>(got[first_bad_got])));
    return row;
  }
  // Relative L2 error; an empty or all-zero reference has no scale, so the error is absolute.
  if (ref2 > 0.0) {
    row.error = std::sqrt(diff2 / ref2);
  } else {
    row.error = std::sqrt(diff2);
    append_note(row.note, got.empty() ? "empty" : "absolute error (reference all zero)");
  }
  row.pass = row.error <= threshold;
  if (!row.pass && worst >= 0.0)
    append_note(row.note, strprintf("largest difference %.3g at [%zu]: got %.9g, expected %.9g",
                                    worst, worst_at, static_cast<double>(got[worst_at]),
                                    static_cast<double>(expected[worst_at])));
  return row;
}

// A device buffer four times the L2 cache, read (l2_flush.cu) before each timed call so that every
// call starts from a cache holding none of its data and reads its inputs from device memory, as
// the roofline floor assumes. Allocated once, zeroed, and kept for the life of the process.
struct CacheFlush {
  void* data = nullptr;
  size_t bytes = 0;
  int* sink = nullptr;
};

const CacheFlush& cache_flush() {
  static const CacheFlush flush = [] {
    CacheFlush f;
    int device = 0, l2 = 0;
    DJ_CUDA(cudaGetDevice(&device));
    DJ_CUDA(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device));
    f.bytes = std::max<size_t>(size_t{4} * static_cast<size_t>(l2), size_t{64} << 20);
    DJ_CUDA(cudaMalloc(&f.data, f.bytes));
    DJ_CUDA(cudaMalloc(reinterpret_cast<void**>(&f.sink), sizeof(int)));
    DJ_CUDA(cudaMemset(f.data, 0, f.bytes));
    DJ_CUDA(cudaDeviceSynchronize());
    return f;
  }();
  return flush;
}

// Destroys the events it was given, also when timing throws.
struct Events {
  std::vector<cudaEvent_t> events;
  explicit Events(size_t count) {
    events.reserve(count);
    for (size_t i = 0; i < count; ++i) {
      cudaEvent_t event = nullptr;
      DJ_CUDA(cudaEventCreate(&event));
      events.push_back(event);
    }
  }
  ~Events() {
    for (cudaEvent_t event : events) cudaEventDestroy(event);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
};

std::vector<RegisteredCase>& registry() {
  static std::vector<RegisteredCase> cases;
  return cases;
}

}  // namespace

void cuda_check(cudaError_t status, const char* call) {
  if (status == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so that the next case starts clean
  throw std::runtime_error(std::string(call) + ": " + describe(status));
}

std::vector<float> Context::normal(size_t count, float stddev) {
  std::normal_distribution<float> distribution(0.0f, stddev);
  std::vector<float> values(count);
  for (float& v : values) v = distribution(rng);
  return values;
}

std::vector<float> Context::uniform(size_t count, float lo, float hi) {
  std::uniform_real_distribution<float> distribution(lo, hi);
  std::vector<float> values(count);
  for (float& v : values) v = distribution(rng);
  return values;
}

void Context::poison(void* device, size_t bytes) {
  if (bytes == 0) return;
  DJ_CUDA(cudaMemsetAsync(device, 0xFF, bytes, stream));
  DJ_CUDA(cudaStreamSynchronize(stream));
}

void Context::sync(const char* what) {
  cudaError_t status = cudaStreamSynchronize(stream);
  if (status == cudaSuccess) status = cudaGetLastError();
  if (status != cudaSuccess) {
    cudaGetLastError();
    throw std::runtime_error(std::string(what) + ": " + describe(status));
  }
}

bool Context::compare(const std::string& name, const std::vector<float>& got,
                      const std::vector<float>& expected, double threshold,
                      const std::string& note) {
  CheckRow row = compare_values(name, got, expected, threshold, note);
  print_row(row);
  std::lock_guard<std::mutex> lock(results_mutex());
  checks_.push_back(row);
  return row.pass;
}

bool Context::compare(const std::string& name, const std::vector<double>& got,
                      const std::vector<double>& expected, double threshold,
                      const std::string& note) {
  CheckRow row = compare_values(name, got, expected, threshold, note);
  print_row(row);
  std::lock_guard<std::mutex> lock(results_mutex());
  checks_.push_back(row);
  return row.pass;
}

void Context::expect(const std::string& name, bool ok, const std::string& note) {
  CheckRow row{name, 0.0, 0.0, ok, note};
  print_row(row);
  std::lock_guard<std::mutex> lock(results_mutex());
  checks_.push_back(row);
}

double Context::time_ms(const std::function<void()>& fn, int repeats, int warmup) {
  repeats = std::max(repeats, 1);
  for (int i = 0; i < warmup; ++i) fn();
  sync("time_ms: warm-up");
  const CacheFlush& flush = cache_flush();
  Events start(static_cast<size_t>(repeats)), stop(static_cast<size_t>(repeats));
  // Every call is queued before the first is waited for, so launch gaps between calls do not
  // count; the cache flush between calls sits outside the timed events.
  for (int r = 0; r < repeats; ++r) {
    DJ_CUDA(l2_flush(flush.data, flush.bytes, flush.sink, stream));
    DJ_CUDA(cudaEventRecord(start.events[static_cast<size_t>(r)], stream));
    fn();
    DJ_CUDA(cudaEventRecord(stop.events[static_cast<size_t>(r)], stream));
  }
  sync("time_ms: timed calls");
  std::vector<double> times;
  for (int r = 0; r < repeats; ++r) {
    float ms = 0.0f;
    DJ_CUDA(cudaEventElapsedTime(&ms, start.events[static_cast<size_t>(r)],
                                 stop.events[static_cast<size_t>(r)]));
    times.push_back(ms);
  }
  std::sort(times.begin(), times.end());
  const size_t n = times.size();
  return n % 2 == 1 ? times[n / 2] : 0.5 * (times[n / 2 - 1] + times[n / 2]);
}

void Context::bench(BenchRow row) {
  std::printf("  BENCH %-47s %.4g ms %s\n", row.name.c_str(), row.ms, row.note.c_str());
  std::fflush(stdout);
  std::lock_guard<std::mutex> lock(results_mutex());
  benches_.push_back(std::move(row));
}

bool register_case(const char* name, CaseFn fn, bool is_bench) {
  registry().push_back(RegisteredCase{name, fn, is_bench});
  return true;
}

const std::vector<RegisteredCase>& registered_cases() { return registry(); }

std::mutex& results_mutex() {
  static std::mutex mutex;
  return mutex;
}

}  // namespace dj::gpucheck
