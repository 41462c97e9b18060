// Which backend runs the model. The command line records what --device asked for
// (request_device); commands that can use a GPU ask select_backend(), which probes for a CUDA
// device once per process: "auto" takes device 0 when there is one and otherwise says once, at
// info level, that it runs on the CPU; "cuda" makes a missing device an error; "cpu" never probes.
// Commands that cannot use a GPU never probe, so they print nothing about devices.
#pragma once
#include <string>

namespace dj {

enum class Backend { CPU, CUDA };

struct BackendInfo {
  Backend backend = Backend::CPU;
  std::string description;  // "CPU (8 threads, OpenBLAS Haswell kernels)" or "CUDA device 0: NVIDIA H200 (sm_90)"
};

// "auto" (the default), "cpu" or "cuda"; anything else is an error.
void request_device(const std::string& device);
// The backend for the current command (probing on the first call).
BackendInfo select_backend();
// The CPU's description, for messages.
std::string cpu_description();

}  // namespace dj
