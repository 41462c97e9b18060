#include <cuda_runtime.h>

#include "kernels/cuda/device.h"

namespace dj::cuda {

DeviceProbe probe_devices() {
  DeviceProbe probe;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    probe.error = cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return probe;
  }
  probe.device_count = count;
  if (count == 0) {
    probe.error = "no CUDA device";
    return probe;
  }
  cudaDeviceProp properties{};
  if (cudaGetDeviceProperties(&properties, 0) == cudaSuccess) {
    probe.name = properties.name;
    probe.compute_major = properties.major;
    probe.compute_minor = properties.minor;
  }
  return probe;
}

}  // namespace dj::cuda
