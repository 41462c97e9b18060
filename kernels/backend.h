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
  std::string description;  // cpu_description() or "CUDA device 0: NVIDIA H200 (sm_90)"
};

// "auto" (the default), "cpu" or "cuda"; anything else is an error.
void request_device(const std::string& device);
// The backend for the current command (probing on the first call).
BackendInfo select_backend();
// The CPU's description, for messages:
// "CPU (2 threads, OpenBLAS Haswell kernels, OpenMP build, AVX2 (8 float lanes))".
std::string cpu_description();

// The OpenBLAS the process loaded (which may not be the one it was linked with: LD_LIBRARY_PATH,
// LD_PRELOAD or a run path can substitute another build of the same soname).
struct BlasInfo {
  std::string version;  // "0.3.21"
  std::string build;    // "OpenMP", "pthread" or "sequential" (openblas_get_parallel)
  std::string library;  // the loaded file, links resolved
  std::string kernels;  // the kernel family OpenBLAS chose, e.g. "Haswell"
  int threads = 1;      // threads a matrix product outside a parallel region runs on
  bool shares_openmp_pool() const { return build == "OpenMP"; }
};
BlasInfo blas_info();
// "OpenBLAS 0.3.21, OpenMP build (/usr/lib/.../libopenblas.so.0), Haswell kernels, 2 threads".
std::string blas_description();
// Warns once per process, on the log, when the loaded OpenBLAS is slower than it should be: its
// generic kernels on a CPU it does not know, or a build with its own thread pool (pthread) or
// none (sequential). select_backend() calls it; commands that never select a backend may too.
void warn_about_blas();

}  // namespace dj
