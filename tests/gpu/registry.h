// Internal to the harness, beyond check.h: the registered cases and the lock that guards the rows
// a Context records (kernel_check_main.cpp; its watchdog prints them from another thread), and the
// cache flush of Context::time_ms.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "check.h"

namespace dj::gpucheck {

struct RegisteredCase {
  std::string name;
  CaseFn fn = nullptr;
  bool is_bench = false;
};

// Every case registered by DJ_GPU_CHECK / DJ_GPU_BENCH, in registration order.
const std::vector<RegisteredCase>& registered_cases();

// Reads `bytes` of `buffer` (16-byte aligned, zeroed) on `stream`, which leaves the L2 cache
// holding clean lines of it; `sink` is a device int the kernel never actually writes. In
// l2_flush.cu; a launch error throws (dj::cuda::launch), so it returns cudaSuccess.
cudaError_t l2_flush(const void* buffer, size_t bytes, int* sink, cudaStream_t stream);

// Held by Context while it appends a row; hold it to read ctx.checks() / ctx.benches() from a
// thread other than the one running the cases.
std::mutex& results_mutex();

}  // namespace dj::gpucheck
