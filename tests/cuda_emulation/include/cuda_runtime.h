// CUDA runtime of the CPU emulation: the API of cuda_runtime_api.h, the C++ conveniences of the
// toolkit's cuda_runtime.h (typed cudaMalloc, cudaFuncSetAttribute and occupancy on kernel
// pointers) and everything device code uses (dj_emu/device.h).
#pragma once
#include <cstdint>
#include <cstring>

#include "cuda_runtime_api.h"
#include "dj_emu/device.h"

namespace dj::emu {
template <class F>
inline const void* function_address(F* function) {
  const void* address = nullptr;
  static_assert(sizeof(function) == sizeof(address), "function and data pointers differ in size");
  std::memcpy(&address, &function, sizeof address);
  return address;
}
}  // namespace dj::emu

template <class T>
inline cudaError_t cudaMalloc(T** devPtr, size_t size) {
  return ::cudaMalloc(reinterpret_cast<void**>(devPtr), size);
}
template <class T>
inline cudaError_t cudaMallocAsync(T** devPtr, size_t size, cudaStream_t stream) {
  return ::cudaMallocAsync(reinterpret_cast<void**>(devPtr), size, stream);
}
template <class T>
inline cudaError_t cudaMallocHost(T** ptr, size_t size) {
  return ::cudaMallocHost(reinterpret_cast<void**>(ptr), size);
}
template <class T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(::dj::emu::function_address(entry), attr, value);
}
template <class T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* numBlocks, T* func, int blockSize,
                                                                 size_t dynamicSMemSize) {
  return ::cudaOccupancyMaxActiveBlocksPerMultiprocessor(numBlocks, ::dj::emu::function_address(func), blockSize,
                                                         dynamicSMemSize);
}
