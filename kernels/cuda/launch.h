// The one way kernels are launched (kernels/cuda and tests/gpu): launch(name, kernel, grid,
// block, dynamic shared bytes, stream, arguments...).
//   - Under nvcc it launches with <<<grid, block, shared, stream>>> and checks cudaGetLastError
//     (a bad configuration throws std::runtime_error naming the kernel).
//   - With the environment variable DIJIANG_CUDA_SYNC_LAUNCHES=1 (read once) it also synchronises
//     the stream after every launch and throws std::runtime_error naming the kernel and the error,
//     so that a fault is reported by the kernel that caused it (slow; for debugging).
//   - Under DIJIANG_CUDA_EMULATION (tests/cuda_emulation) it hands the launch to the CPU
//     emulation, which runs the same kernel source.
// DJ_DYNAMIC_SHARED(name) declares the block's dynamic shared memory as `unsigned char name[]`
// (16-byte aligned) in either build.
//
// For .cu sources (nvcc or the emulation), C++17.
#pragma once
#include <cuda_runtime.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>

#if DIJIANG_CUDA_EMULATION
#include <dj_emu/launch.h>
#define DJ_DYNAMIC_SHARED(name) unsigned char* const name = ::dj::emu::dynamic_shared()
#else
#define DJ_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace dj::cuda {

// Whether DIJIANG_CUDA_SYNC_LAUNCHES asks for a synchronisation after every launch.
inline bool sync_launches() {
  static const bool enabled = [] {
    const char* value = std::getenv("DIJIANG_CUDA_SYNC_LAUNCHES");
    return value != nullptr && std::strcmp(value, "1") == 0;
  }();
  return enabled;
}

namespace detail {

inline void launch_failed(const char* kernel, cudaError_t status, const std::string& detail, const char* when) {
  std::string message = std::string("kernel ") + kernel + ": " + cudaGetErrorName(status) + " (" +
                        cudaGetErrorString(status) + ")" + when;
  if (!detail.empty()) message += ": " + detail;
  throw std::runtime_error(message);
}

}  // namespace detail

template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t shared_bytes,
            cudaStream_t stream, Args&&... args) {
  std::string explanation;  // the emulation says what was wrong with a launch it refused
#if DIJIANG_CUDA_EMULATION
  ::dj::emu::launch_kernel(name, kernel, grid, block, shared_bytes, stream, std::forward<Args>(args)...);
  explanation = ::dj::emu::take_launch_detail();
#else
  kernel<<<grid, block, shared_bytes, stream>>>(std::forward<Args>(args)...);
#endif
  const cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) detail::launch_failed(name, status, explanation, " at launch");
  if (sync_launches()) {
    cudaError_t synced = cudaStreamSynchronize(stream);
    if (synced == cudaSuccess) synced = cudaGetLastError();
    if (synced != cudaSuccess)
      detail::launch_failed(name, synced, "", " after the launch (DIJIANG_CUDA_SYNC_LAUNCHES)");
  }
}

}  // namespace dj::cuda
