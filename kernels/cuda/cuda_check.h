// Error checking for the CUDA kernels. Kept free of fmt and of kernels/core/error.h so that it
// compiles under nvcc (C++17) as well as the host compiler: a failure throws std::runtime_error
// naming the call, which the command line reports like any other error.
#pragma once
#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

namespace dj::cuda {

inline void check(cudaError_t status, const char* call) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(call) + ": " + cudaGetErrorString(status));
}

}  // namespace dj::cuda

#define DJ_CUDA_CHECK(call) ::dj::cuda::check((call), #call)
