// Which backend runs the ops. Without a usable GPU (or without the CUDA build) everything runs
// on the CPU; the reason is logged once per process.
#pragma once
#include <string>

namespace dj {

enum class Backend { CPU, CUDA };

struct BackendInfo {
  Backend backend = Backend::CPU;
  std::string description;  // "CPU (8 threads)" or "CUDA device 0: NVIDIA H200 (sm_90)"
};

// `requested` is "auto" or "cpu". "auto" probes for a CUDA device (once per process) and reports
// what it found: with one, training (`dijiang train`) runs on device 0; every other command runs
// on the CPU.
BackendInfo select_backend(const std::string& requested = "auto");
// What the last select_backend() chose (the CPU before any call).
const BackendInfo& selected_backend();

}  // namespace dj
