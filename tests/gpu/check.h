// The kernel checks of the GPU machine: each CUDA op against its CPU reference on fresh random
// inputs, then benchmarks. Check files register cases with DJ_GPU_CHECK / DJ_GPU_BENCH; the
// program (kernel_check_main.cpp) runs them all, or those whose name contains a filter, and
// prints one table of checks and one of benchmarks last.
//
// Conventions for a check:
//   - inputs come from ctx.rng (seeded per run from the clock unless --seed is given, and printed);
//   - every output buffer is poisoned with NaN (ctx.poison) before the kernel runs, so an element
//     the kernel never writes fails the comparison;
//   - every CUDA call goes through DJ_CUDA (throws with the call and the error string), and
//     ctx.sync() after launches catches asynchronous errors;
//   - results are compared with ctx.compare(name, got, expected, threshold): the relative error
//     ‖got − expected‖₂ / ‖expected‖₂ (and any non-finite value fails), with thresholds:
//     fp32 paths 1e-5 unless a reduction order justifies more, bf16 inputs 1e-2 (the rounding of
//     bf16 operands and outputs, about 2^-8 relative, summed over a product).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/device_array.h"

namespace dj::gpucheck {

// True when the checks run on the CPU emulation of CUDA (tests/cuda_emulation, defined by its
// build): each case then picks small shapes that keep the edge cases it lists, and the benchmarks
// are skipped (the emulation has no meaningful timing).
#if DIJIANG_CUDA_EMULATION
inline constexpr bool kEmulated = true;
#else
inline constexpr bool kEmulated = false;
#endif

// Throws std::runtime_error("<call>: <CUDA error string>") when `status` is not cudaSuccess.
void cuda_check(cudaError_t status, const char* call);
#define DJ_CUDA(call) ::dj::gpucheck::cuda_check((call), #call)

// The backend's owning device buffer (kernels/cuda/device_array.h) with host transfers for checks.
template <typename T>
class DeviceBuffer : public cuda::DeviceArray<T> {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t count) : cuda::DeviceArray<T>(count) {}
  explicit DeviceBuffer(const std::vector<T>& host) : DeviceBuffer(host.size()) { upload(host); }

  void upload(const std::vector<T>& host) {
    if (host.size() != this->size()) throw std::runtime_error("DeviceBuffer::upload: size mismatch");
    if (!host.empty()) DJ_CUDA(cudaMemcpy(this->get(), host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(this->size());
    if (!host.empty()) DJ_CUDA(cudaMemcpy(host.data(), this->get(), host.size() * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
};

struct CheckRow {
  std::string name;
  double error = 0.0, threshold = 0.0;
  bool pass = false;
  std::string note;
};

struct BenchRow {
  std::string name;
  double ms = 0.0;       // median time of one call
  double tflops = 0.0;   // achieved (0: not meaningful)
  double gbps = 0.0;     // achieved
  double floor_ms = 0.0; // roofline floor from the cost model (0: none)
  std::string note;
};

class Context {
 public:
  explicit Context(uint64_t seed) : rng(seed) {}

  std::mt19937_64 rng;
  cudaStream_t stream = nullptr;  // the stream checks launch on

  std::vector<float> normal(size_t count, float stddev = 1.0f);
  std::vector<float> uniform(size_t count, float lo, float hi);
  // Fills count elements of `bytes_per_element` at `device` with NaN bit patterns (0xFF bytes).
  void poison(void* device, size_t bytes);
  template <typename T>
  void poison(DeviceBuffer<T>& buffer) {
    poison(buffer.get(), buffer.size() * sizeof(T));
  }
  // cudaStreamSynchronize + cudaGetLastError, naming `what` on failure.
  void sync(const char* what);

  // Records a comparison; returns whether it passed.
  bool compare(const std::string& name, const std::vector<float>& got, const std::vector<float>& expected,
               double threshold, const std::string& note = "");
  bool compare(const std::string& name, const std::vector<double>& got, const std::vector<double>& expected,
               double threshold, const std::string& note = "");
  // Records a pass/fail fact that is not a numeric comparison.
  void expect(const std::string& name, bool ok, const std::string& note = "");

  // Median milliseconds of `repeats` calls of `fn` (after `warmup` calls), timed with CUDA events
  // on `stream`.
  double time_ms(const std::function<void()>& fn, int repeats = 10, int warmup = 2);
  void bench(BenchRow row);

  const std::vector<CheckRow>& checks() const { return checks_; }
  const std::vector<BenchRow>& benches() const { return benches_; }

 private:
  std::vector<CheckRow> checks_;
  std::vector<BenchRow> benches_;
};

// Registration: DJ_GPU_CHECK(layernorm) { ... uses ctx ... } defines and registers a check;
// DJ_GPU_BENCH likewise for a benchmark (benchmarks run after every check, and only with --bench).
using CaseFn = void (*)(Context&);
bool register_case(const char* name, CaseFn fn, bool is_bench);
#define DJ_GPU_CASE_(name, bench)                                                               \
  static void dj_gpu_case_##name(::dj::gpucheck::Context& ctx);                                 \
  [[maybe_unused]] static const bool dj_gpu_case_registered_##name =                            \
      ::dj::gpucheck::register_case(#name, dj_gpu_case_##name, bench);                          \
  static void dj_gpu_case_##name([[maybe_unused]] ::dj::gpucheck::Context& ctx)
#define DJ_GPU_CHECK(name) DJ_GPU_CASE_(name, false)
#define DJ_GPU_BENCH(name) DJ_GPU_CASE_(bench_##name, true)

}  // namespace dj::gpucheck
