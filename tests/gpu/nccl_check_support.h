// What the NCCL device check's cases share (nccl_check.cpp): the inputs (exact in float32 whatever
// the order of a sum), page-locked staging for asynchronous uploads, one rank's view (its
// communicator, compute stream and seed), and the bit-for-bit comparison of an output and the
// poisoned guard after it.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "comm/nccl/nccl_communicator.h"
#include "kernels/cuda/device_array.h"

namespace dj::gpucheck::nccl {

using dj::comm::NcclCommunicator;
using dj::comm::Request;

constexpr int64_t kGuard = 64;         // poisoned values after every output, checked untouched
constexpr double kOpTimeoutS = 60.0;   // a hang ends the check instead of the whole lease
constexpr uint32_t kPoisonBits = 0xFFFFFFFFu;  // a NaN: cudaMemset(0xFF)

inline std::string strprintf(const char* format, ...) __attribute__((format(printf, 1, 2)));
inline std::string strprintf(const char* format, ...) {
  char buffer[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  return buffer;
}

inline void cuda_check(cudaError_t status, const char* call, int line) {
  if (status != cudaSuccess)
    throw std::runtime_error(strprintf("line %d: %s failed: %s (%s)", line, call,
                                       cudaGetErrorString(status), cudaGetErrorName(status)));
}
#define CUDA_CHECK(call) cuda_check((call), #call, __LINE__)

// ---- data -----------------------------------------------------------------------------------

inline uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Value i of rank `rank`'s input under `seed`: a non-zero multiple of 1/256, |v| <= 1000/256.
inline float value(uint64_t seed, int rank, int64_t i) {
  const uint64_t x = mix(seed ^ mix(static_cast<uint64_t>(rank) * 0x632BE59BD9B4E019ull +
                                    static_cast<uint64_t>(i)));
  int k = static_cast<int>(x % 2001) - 1000;
  if (k == 0) k = 1;
  return static_cast<float>(k) / 256.0f;
}

using DeviceBuffer = dj::cuda::DeviceArray<float>;

// Page-locked host memory, so that the uploads are truly asynchronous.
struct PinnedBuffer {
  float* data = nullptr;
  int64_t count = 0;
  explicit PinnedBuffer(int64_t n) : count(n) {
    CUDA_CHECK(cudaMallocHost(&data, static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(float)));
  }
  ~PinnedBuffer() { cudaFreeHost(data); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
};

struct Rank {
  NcclCommunicator& comm;
  cudaStream_t compute;
  uint64_t seed;
  std::vector<std::unique_ptr<PinnedBuffer>> staging;  // alive until the next synchronisation

  int rank() const { return comm.rank(); }
  int size() const { return comm.size(); }

  void poison(float* device, int64_t count) {
    CUDA_CHECK(cudaMemsetAsync(device, 0xFF, static_cast<size_t>(count) * sizeof(float), compute));
  }
  // Rank `owner`'s values [first, first + count) under `seed`, copied to `device` on the compute
  // stream without waiting for the copy.
  void upload(float* device, uint64_t data_seed, int owner, int64_t first, int64_t count) {
    if (count == 0) return;
    auto host = std::make_unique<PinnedBuffer>(count);
    for (int64_t i = 0; i < count; ++i) host->data[i] = value(data_seed, owner, first + i);
    CUDA_CHECK(cudaMemcpyAsync(device, host->data, static_cast<size_t>(count) * sizeof(float),
                               cudaMemcpyHostToDevice, compute));
    staging.push_back(std::move(host));
  }
  std::vector<float> download(const float* device, int64_t count) {
    std::vector<float> host(static_cast<size_t>(count));
    CUDA_CHECK(cudaStreamSynchronize(compute));
    if (count > 0)
      CUDA_CHECK(cudaMemcpy(host.data(), device, static_cast<size_t>(count) * sizeof(float),
                            cudaMemcpyDeviceToHost));
    staging.clear();
    return host;
  }
};

// "" when `got` equals `want` bit for bit, else what differs.
inline std::string compare(std::span<const float> got, std::span<const float> want) {
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++differ;
    }
  }
  if (differ == 0) return "";
  const size_t f = static_cast<size_t>(first);
  return strprintf("%lld of %zu values differ, first at %lld: got %.9g, want %.9g",
                   static_cast<long long>(differ), want.size(), static_cast<long long>(first),
                   static_cast<double>(got[f]), static_cast<double>(want[f]));
}

inline std::string check_guard(std::span<const float> guard) {
  for (size_t i = 0; i < guard.size(); ++i) {
    uint32_t bits;
    std::memcpy(&bits, &guard[i], sizeof bits);
    if (bits != kPoisonBits) return strprintf("wrote past the output (guard value %zu)", i);
  }
  return "";
}

// Result of a device output of `count` values followed by kGuard guard values.
inline std::string check_output(Rank& r, const float* device, std::span<const float> want) {
  const int64_t count = static_cast<int64_t>(want.size());
  const std::vector<float> got = r.download(device, count + kGuard);
  std::string error = compare(std::span(got).first(want.size()), want);
  if (error.empty()) error = check_guard(std::span(got).subspan(want.size()));
  return error;
}

inline void wait(Rank& r, Request& request, const char* what) { r.comm.wait(request, what); }

}  // namespace dj::gpucheck::nccl
