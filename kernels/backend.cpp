#include "kernels/backend.h"

#include <cblas.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <string_view>

#include <mutex>

#include "kernels/core/error.h"
#ifdef DIJIANG_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace dj {

namespace {

std::string cpu_description() {
  return fmt::format("CPU ({} threads, OpenBLAS {} kernels)", omp_get_max_threads(), openblas_get_corename());
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

BackendInfo& selection() {
  static BackendInfo info{Backend::CPU, "CPU"};
  return info;
}

}  // namespace

const BackendInfo& selected_backend() { return selection(); }

BackendInfo select_backend(const std::string& requested) {
  if (requested != "auto" && requested != "cpu")
    fail("unknown device '{}': expected auto or cpu", requested);
  static std::once_flag blas_once;
  std::call_once(blas_once, warn_about_generic_blas_kernels);
  BackendInfo info{Backend::CPU, cpu_description()};
  if (requested == "cpu") return selection() = info;
#ifdef DIJIANG_HAVE_CUDA
  static std::once_flag once;
  static cuda::DeviceProbe probe;
  std::call_once(once, [] {
    probe = cuda::probe_devices();
    if (probe.device_count == 0)
      spdlog::warn("no usable CUDA device ({}); running on the CPU", probe.error);
    else
      spdlog::info("CUDA device 0: {} (sm_{}{}); training runs on it, the other commands on the CPU",
                   probe.name, probe.compute_major, probe.compute_minor);
  });
  if (probe.device_count > 0)
    info = {Backend::CUDA, fmt::format("CUDA device 0: {} (sm_{}{})", probe.name, probe.compute_major,
                                       probe.compute_minor)};
#else
  static std::once_flag once;
  std::call_once(once, [] { spdlog::warn("built without the CUDA backend; running on the CPU"); });
#endif
  return selection() = info;
}

}  // namespace dj
