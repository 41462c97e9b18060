#include "kernels/backend.h"

#include <cblas.h>
#include <omp.h>
#include <spdlog/spdlog.h>

#include <cstdlib>
#include <mutex>
#include <string_view>

#include "kernels/core/error.h"
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

}  // namespace

std::string cpu_description() {
  return fmt::format("CPU ({} threads, OpenBLAS {} kernels)", omp_get_max_threads(), openblas_get_corename());
}

void request_device(const std::string& device) {
  if (device != "auto" && device != "cpu" && device != "cuda")
    fail("unknown device '{}': expected auto, cpu or cuda", device);
  requested() = device;
}

BackendInfo select_backend() {
  static std::once_flag blas_once;
  std::call_once(blas_once, warn_about_generic_blas_kernels);
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
