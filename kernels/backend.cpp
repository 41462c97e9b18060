#include "kernels/backend.h"

#include <omp.h>
#include <spdlog/spdlog.h>

#include <mutex>

#include "kernels/core/error.h"
#ifdef DIJIANG_HAVE_CUDA
#include "kernels/cuda/device.h"
#endif

namespace dj {

namespace {
std::string cpu_description() { return fmt::format("CPU ({} threads)", omp_get_max_threads()); }
}  // namespace

BackendInfo select_backend(const std::string& requested) {
  if (requested != "auto" && requested != "cpu")
    fail("unknown device '{}': expected auto or cpu", requested);
  BackendInfo info{Backend::CPU, cpu_description()};
  if (requested == "cpu") return info;
#ifdef DIJIANG_HAVE_CUDA
  static std::once_flag once;
  static cuda::DeviceProbe probe;
  std::call_once(once, [] {
    probe = cuda::probe_devices();
    if (probe.device_count == 0)
      spdlog::warn("no usable CUDA device ({}); running on the CPU", probe.error);
    else
      spdlog::info("CUDA device 0: {} (sm_{}{}); model ops of this build run on the CPU",
                   probe.name, probe.compute_major, probe.compute_minor);
  });
#else
  static std::once_flag once;
  std::call_once(once, [] { spdlog::warn("built without the CUDA backend; running on the CPU"); });
#endif
  return info;
}

}  // namespace dj
