// Run-time probe for a usable CUDA device: defined by kernels/cuda/device.cpp in the CUDA variants,
// and by trainer/train/no_cuda.cpp (no device, and why) in builds without CUDA.
#pragma once
#include <string>

namespace dj::cuda {

struct DeviceProbe {
  int device_count = 0;
  std::string error;  // the CUDA runtime's message when no device could be used
  std::string name;   // device 0's name when one was found
  int compute_major = 0;
  int compute_minor = 0;
};

DeviceProbe probe_devices();

}  // namespace dj::cuda
