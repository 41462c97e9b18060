// Run-time probe for a usable CUDA device. Compiled only in builds with the CUDA backend.
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
