// The cache flush of Context::time_ms (check.cpp): one read of a buffer larger than the L2 cache.
// Reading, not writing, leaves the cache full of clean lines, so the timed call that follows pays
// for its own reads from device memory and for no write-back of the flush's lines.
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/launch.h"
#include "registry.h"

namespace dj::gpucheck {

namespace {

__global__ void read_all(const int4* __restrict__ data, size_t count, int* sink) {
  int acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    const int4 v = data[i];
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  // The buffer is zeroed when allocated, so this never stores; it keeps the loads alive.
  if (acc == 0x5EED) *sink = acc;
}

}  // namespace

cudaError_t l2_flush(const void* buffer, size_t bytes, int* sink, cudaStream_t stream) {
  dj::cuda::launch("read_all", read_all, 1024, 256, 0, stream, static_cast<const int4*>(buffer),
                   bytes / sizeof(int4), sink);  // throws on a launch error
  return cudaSuccess;
}

}  // namespace dj::gpucheck
