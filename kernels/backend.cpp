#include "kernels/backend.h"

#include <cblas.h>
#include <dlfcn.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <sstream>
#include <string_view>

#include "kernels/core/error.h"
#include "kernels/cpu/simd.h"
#include "kernels/cuda/device.h"

namespace dj {

namespace {

std::string& requested() {
  static std::string device = "auto";
  return device;
}

// OpenBLAS falls back to its generic "Prescott" kernels on CPUs newer than its release knows,
// which makes every matrix product 3-4x slower. The kernel set is fixed when the library loads,
// so the remedy is an environment variable (launch/setup.sh sets it).
void warn_about_generic_blas_kernels() {
  if (std::string_view(openblas_get_corename()) != "Prescott" || std::getenv("OPENBLAS_CORETYPE") != nullptr) return;
  const char* suggestion = __builtin_cpu_supports("avx512f") ? "SkylakeX" : __builtin_cpu_supports("avx2") ? "Haswell" : nullptr;
  if (suggestion != nullptr)
    spdlog::warn("OpenBLAS does not recognise this CPU and uses its generic kernels; set "
                 "OPENBLAS_CORETYPE={} for several times faster matrix products",
                 suggestion);
}

// The program is linked with OpenBLAS's OpenMP build (cmake/DijiangDependencies.cmake), whose
// products run on the program's own OpenMP threads. The pthread build keeps a second pool of
// spinning threads that takes turns with OpenMP's on the same cores.
void warn_about_blas_build() {
  const BlasInfo blas = blas_info();
  if (blas.build == "pthread")
    spdlog::warn("the loaded OpenBLAS ({}) is its pthread build: its thread pool competes with the program's OpenMP "
                 "threads for the cores (training steps 1.5-1.7x slower); load the OpenMP build it was built "
                 "with (check LD_LIBRARY_PATH and LD_PRELOAD)",
                 blas.library);
  else if (blas.build == "sequential")
    spdlog::warn("the loaded OpenBLAS ({}) is its sequential build: every matrix product runs on one core; load "
                 "the OpenMP build it was built with (check LD_LIBRARY_PATH and LD_PRELOAD)",
                 blas.library);
}

}  // namespace

BlasInfo blas_info() {
  BlasInfo info;
  // openblas_get_config(): "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64".
  std::istringstream config(openblas_get_config());
  std::string name;
  config >> name >> info.version;
  switch (openblas_get_parallel()) {
    case OPENBLAS_SEQUENTIAL: info.build = "sequential"; break;
    case OPENBLAS_THREAD: info.build = "pthread"; break;
    case OPENBLAS_OPENMP: info.build = "OpenMP"; break;
    default: info.build = "unknown"; break;
  }
  Dl_info where{};
  if (dladdr(reinterpret_cast<void*>(&cblas_sgemm), &where) != 0 && where.dli_fname != nullptr) {
    std::error_code error;
    const std::filesystem::path resolved = std::filesystem::canonical(where.dli_fname, error);
    info.library = error ? where.dli_fname : resolved.string();
  }
  info.kernels = openblas_get_corename();
  // The OpenMP build sizes each product's team like the program's loops (omp_get_max_threads
  // when called outside a parallel region, one thread inside one); the others have a pool of
  // their own.
  info.threads = info.shares_openmp_pool() ? omp_get_max_threads() : openblas_get_num_threads();
  return info;
}

std::string blas_description() {
  const BlasInfo b = blas_info();
  return fmt::format("OpenBLAS {}, {} build ({}), {} kernels, {} thread{}", b.version, b.build, b.library, b.kernels,
                     b.threads, b.threads == 1 ? "" : "s");
}

void warn_about_blas() {
  static std::once_flag once;
  std::call_once(once, [] {
    warn_about_generic_blas_kernels();
    warn_about_blas_build();
  });
}

std::string cpu_description() {
  return fmt::format("CPU ({} threads, OpenBLAS {} kernels, {} build, {})", omp_get_max_threads(),
                     openblas_get_corename(), blas_info().build, cpu::simd_description(cpu::simd_width()));
}

void request_device(const std::string& device) {
  if (device != "auto" && device != "cpu" && device != "cuda")
    fail("unknown device '{}': expected auto, cpu or cuda", device);
  requested() = device;
}

BackendInfo select_backend() {
  warn_about_blas();
  const BackendInfo cpu{Backend::CPU, cpu_description()};
  if (requested() == "cpu") return cpu;
  // The probe comes with the CUDA variant an executable links (cmake/DijiangCuda.cmake): the
  // runtime's, the emulation's, or one saying that the build has no CUDA backend.
  static std::once_flag once;
  static cuda::DeviceProbe probe;
  std::call_once(once, [] { probe = cuda::probe_devices(); });
  if (probe.device_count > 0)
    return {Backend::CUDA, fmt::format("CUDA device 0: {} (sm_{}{})", probe.name, probe.compute_major,
                                       probe.compute_minor)};
  if (requested() == "cuda") fail("--device cuda: no usable CUDA device ({})", probe.error);
  static std::once_flag told;
  std::call_once(told, [] { spdlog::info("no usable CUDA device ({}); running on the CPU", probe.error); });
  return cpu;
}

}  // namespace dj
