// The emulation's runtime: device memory (poisoning, guard pages, canaries, allocation errors),
// copies, launch checks, stream ordering (a missing dependency between streams shows up for some
// seed, the event wait never fails), events and fault reports. Two devices of 4 GB each
// (environment.cpp).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "dj_emu/control.h"
#include "kernels/cuda/launch.h"
#include "support.h"

namespace {

using dj::emu::test::Device;

__global__ void fill_kernel(float* out, float value, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = value;
}

__global__ void copy_kernel(float* out, const float* in, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = in[i];
}

__global__ void read_shared_kernel(float* out) {
  DJ_DYNAMIC_SHARED(smem);
  out[threadIdx.x] = reinterpret_cast<const float*>(smem)[threadIdx.x];
}

TEST(Memory, NewMemoryAndSharedMemoryAreNaN) {
  float* p = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&p), 100 * sizeof(float)), cudaSuccess);
  std::vector<float> host(100, 0.0f);
  ASSERT_EQ(cudaMemcpy(host.data(), p, 100 * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  for (float v : host) EXPECT_TRUE(std::isnan(v));
  dj::cuda::launch("read_shared_kernel", read_shared_kernel, 1, 64, 64 * sizeof(float), nullptr, p);
  ASSERT_EQ(cudaMemcpy(host.data(), p, 64 * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
  for (int i = 0; i < 64; ++i) EXPECT_TRUE(std::isnan(host[static_cast<size_t>(i)]));
  EXPECT_EQ(reinterpret_cast<uintptr_t>(p) % 256, 0u);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
}

TEST(Memory, FreeErrorsAndCapacity) {
  void* p = nullptr;
  ASSERT_EQ(cudaMalloc(&p, 1000), cudaSuccess);
  EXPECT_EQ(cudaFree(static_cast<char*>(p) + 8), cudaErrorInvalidValue);  // not an allocation's start
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(p), cudaSuccess);
  EXPECT_EQ(cudaFree(p), cudaErrorInvalidValue);  // double free
  int host = 0;
  EXPECT_EQ(cudaFree(&host), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(nullptr), cudaSuccess);
  cudaGetLastError();

  size_t free_before = 0, total = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_before, &total), cudaSuccess);
  EXPECT_EQ(total, size_t{4} << 30);  // DIJIANG_EMU_MEMORY_GB=4
  void* big = nullptr;
  EXPECT_EQ(cudaMalloc(&big, size_t{5} << 30), cudaErrorMemoryAllocation);
  EXPECT_EQ(cudaGetLastError(), cudaErrorMemoryAllocation);
  ASSERT_EQ(cudaMalloc(&big, size_t{1} << 20), cudaSuccess);
  size_t free_after = 0;
  ASSERT_EQ(cudaMemGetInfo(&free_after, &total), cudaSuccess);
  EXPECT_EQ(free_before - free_after, size_t{1} << 20);
  EXPECT_EQ(cudaFree(big), cudaSuccess);

  void* async = nullptr;
  ASSERT_EQ(cudaMallocAsync(&async, 4096, nullptr), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(async, nullptr), cudaSuccess);
  EXPECT_EQ(cudaFreeAsync(async, nullptr), cudaErrorInvalidValue);  // already freed in stream order
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaGetLastError();
}

TEST(Memory, CopyKindsMustMatchThePointers) {
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d), 16 * sizeof(float)), cudaSuccess);
  std::vector<float> host(16, 1.0f);
  EXPECT_EQ(cudaMemcpy(d, host.data(), 64, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_EQ(cudaMemcpy(host.data(), d, 64, cudaMemcpyHostToDevice), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, host.data(), 64, cudaMemcpyDeviceToHost), cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(d, d, 128, cudaMemcpyDeviceToDevice), cudaErrorInvalidValue);  // past the end
  EXPECT_EQ(cudaMemset(host.data(), 0, 64), cudaErrorInvalidValue);
  cudaGetLastError();
  // Page-locked memory is read when the copy runs; pageable memory when it is queued.
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 64), cudaSuccess);
  cudaStream_t s = nullptr;
  ASSERT_EQ(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), cudaSuccess);
  dj::emu::hold_device(0, true);
  pinned[0] = 1.0f;
  host[0] = 1.0f;
  ASSERT_EQ(cudaMemcpyAsync(d, pinned, 4, cudaMemcpyHostToDevice, s), cudaSuccess);
  ASSERT_EQ(cudaMemcpyAsync(d + 1, host.data(), 4, cudaMemcpyHostToDevice, s), cudaSuccess);
  pinned[0] = 2.0f;
  host[0] = 2.0f;
  dj::emu::hold_device(0, false);
  ASSERT_EQ(cudaStreamSynchronize(s), cudaSuccess);
  float back[2] = {0, 0};
  ASSERT_EQ(cudaMemcpy(back, d, 8, cudaMemcpyDeviceToHost), cudaSuccess);
  EXPECT_EQ(back[0], 2.0f);
  EXPECT_EQ(back[1], 1.0f);
  EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  EXPECT_EQ(cudaFree(d), cudaSuccess);
}

TEST(Launch, PointerArgumentsMustBeLiveDeviceMemory) {
  std::vector<float> host(64);
  float* d = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&d), 64 * sizeof(float)), cudaSuccess);
  EXPECT_EQ(dj::emu::launch_kernel("fill_kernel", fill_kernel, 1, 64, 0, nullptr, host.data(), 1.0f, 64),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  std::string detail = dj::emu::take_launch_detail();
  EXPECT_NE(detail.find("kernel fill_kernel: argument 0"), std::string::npos) << detail;
  EXPECT_NE(detail.find("not device memory"), std::string::npos) << detail;
  EXPECT_EQ(dj::emu::launch_kernel("copy_kernel", copy_kernel, 1, 64, 0, nullptr, d, d + 64, 0), cudaSuccess)
      << "one past the end is a valid pointer";
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaFree(d), cudaSuccess);
  EXPECT_EQ(dj::emu::launch_kernel("copy_kernel", copy_kernel, 1, 64, 0, nullptr, d, static_cast<const float*>(nullptr), 64),
            cudaErrorInvalidValue);
  detail = dj::emu::take_launch_detail();
  EXPECT_NE(detail.find("argument 0"), std::string::npos) << detail;
  EXPECT_NE(detail.find("freed"), std::string::npos) << detail;
  // Memory of the other device.
  ASSERT_EQ(cudaSetDevice(1), cudaSuccess);
  float* other = nullptr;
  ASSERT_EQ(cudaMalloc(reinterpret_cast<void**>(&other), 64 * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaSetDevice(0), cudaSuccess);
  EXPECT_EQ(dj::emu::launch_kernel("fill_kernel", fill_kernel, 1, 64, 0, nullptr, other, 1.0f, 64),
            cudaErrorInvalidValue);
  detail = dj::emu::take_launch_detail();
  EXPECT_NE(detail.find("memory of device 1"), std::string::npos) << detail;
  EXPECT_EQ(cudaFree(other), cudaSuccess);
  // Page-locked host memory is reachable from kernels (unified addressing).
  float* pinned = nullptr;
  ASSERT_EQ(cudaMallocHost(reinterpret_cast<void**>(&pinned), 64 * sizeof(float)), cudaSuccess);
  EXPECT_EQ(dj::emu::launch_kernel("fill_kernel", fill_kernel, 1, 64, 0, nullptr, pinned, 3.0f, 64), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(pinned[63], 3.0f);
  EXPECT_EQ(cudaFreeHost(pinned), cudaSuccess);
  // Through the launch helper: a std::runtime_error naming the kernel.
  try {
    dj::cuda::launch("fill_kernel", fill_kernel, 1, 64, 0, nullptr, host.data(), 1.0f, 64);
    ADD_FAILURE() << "no exception";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("kernel fill_kernel: cudaErrorInvalidValue"), std::string::npos) << e.what();
  }
  cudaGetLastError();
}

__global__ void shared_kernel(float* out) {
  DJ_DYNAMIC_SHARED(smem);
  reinterpret_cast<float*>(smem)[threadIdx.x] = 1.0f;
  out[threadIdx.x] = reinterpret_cast<float*>(smem)[threadIdx.x];
}

TEST(Launch, ConfigurationAndSharedMemoryLimits) {
  Device<float> out(std::vector<float>(1024, 0.0f));
  EXPECT_EQ(dj::emu::launch_kernel("shared_kernel", shared_kernel, 1, 1025, 0, nullptr, out.get()),
            cudaErrorInvalidConfiguration);
  EXPECT_EQ(dj::emu::launch_kernel("shared_kernel", shared_kernel, dim3(1, 65536), 32, 0, nullptr, out.get()),
            cudaErrorInvalidConfiguration);
  EXPECT_EQ(dj::emu::launch_kernel("shared_kernel", shared_kernel, 1, 32, 48 * 1024 + 16, nullptr, out.get()),
            cudaErrorInvalidValue);
  EXPECT_NE(dj::emu::take_launch_detail().find("above its limit"), std::string::npos);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaPeekAtLastError(), cudaSuccess);
  EXPECT_EQ(cudaFuncSetAttribute(shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024), cudaSuccess);
  EXPECT_EQ(dj::emu::launch_kernel("shared_kernel", shared_kernel, 1, 32, 100 * 1024, nullptr, out.get()), cudaSuccess);
  EXPECT_EQ(cudaFuncSetAttribute(shared_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024),
            cudaErrorInvalidValue);  // above the 227 KB an sm_90 block may opt in to
  int value = 0;
  EXPECT_EQ(cudaDeviceGetAttribute(&value, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0), cudaSuccess);
  EXPECT_EQ(value, 227 * 1024);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  cudaGetLastError();
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  EXPECT_STREQ(prop.name, "emulated H200 (CPU)");
  EXPECT_EQ(prop.multiProcessorCount, 132);
  EXPECT_EQ(prop.major, 9);
}

// Producer on one stream, consumer on another: without a dependency the worker may run either
// first; with the event wait the consumer always sees the producer's values.
bool consumer_saw_producer(bool with_event, bool blocking_streams, bool consumer_on_legacy, uint64_t seed) {
  const int n = 256;
  float *a = nullptr, *b = nullptr;
  dj::emu::test::ok(cudaMalloc(reinterpret_cast<void**>(&a), n * sizeof(float)), "cudaMalloc");
  dj::emu::test::ok(cudaMalloc(reinterpret_cast<void**>(&b), n * sizeof(float)), "cudaMalloc");
  dj::emu::test::ok(cudaMemset(a, 0, n * sizeof(float)), "cudaMemset");
  const unsigned flags = blocking_streams ? cudaStreamDefault : cudaStreamNonBlocking;
  cudaStream_t producer = nullptr, consumer = nullptr;
  cudaEvent_t done = nullptr;
  dj::emu::test::ok(cudaStreamCreateWithFlags(&producer, flags), "stream");
  dj::emu::test::ok(cudaStreamCreateWithFlags(&consumer, flags), "stream");
  dj::emu::test::ok(cudaEventCreateWithFlags(&done, cudaEventDisableTiming), "event");
  dj::emu::reseed_device(0, seed);
  dj::emu::hold_device(0, true);
  dj::cuda::launch("fill_kernel", fill_kernel, 1, n, 0, producer, a, 1.0f, n);
  if (with_event) {
    dj::emu::test::ok(cudaEventRecord(done, producer), "record");
    dj::emu::test::ok(cudaStreamWaitEvent(consumer, done, 0), "wait");
  }
  dj::cuda::launch("copy_kernel", copy_kernel, 1, n, 0, consumer_on_legacy ? nullptr : consumer, b, a, n);
  dj::emu::hold_device(0, false);
  dj::emu::test::ok(cudaDeviceSynchronize(), "sync");
  std::vector<float> got(n);
  dj::emu::test::ok(cudaMemcpy(got.data(), b, n * sizeof(float), cudaMemcpyDeviceToHost), "copy");
  cudaEventDestroy(done);
  cudaStreamDestroy(producer);
  cudaStreamDestroy(consumer);
  cudaFree(a);
  cudaFree(b);
  for (float v : got)
    if (v != 1.0f) return false;
  return true;
}

TEST(Streams, MissingDependencyShowsForSomeSeedEventWaitNever) {
  int wrong_without = 0;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    if (!consumer_saw_producer(false, false, false, seed)) ++wrong_without;
    EXPECT_TRUE(consumer_saw_producer(true, false, false, seed)) << "seed " << seed;
  }
  EXPECT_GT(wrong_without, 0);
  EXPECT_LT(wrong_without, 16);
}

TEST(Streams, LegacyStreamWaitsForBlockingStreamsOnly) {
  int wrong_nonblocking = 0;
  for (uint64_t seed = 0; seed < 16; ++seed) {
    EXPECT_TRUE(consumer_saw_producer(false, true, true, seed)) << "seed " << seed;
    if (!consumer_saw_producer(false, false, true, seed)) ++wrong_nonblocking;
  }
  EXPECT_GT(wrong_nonblocking, 0);
}

TEST(Events, QueryElapsedAndErrors) {
  cudaEvent_t start = nullptr, stop = nullptr, untimed = nullptr;
  ASSERT_EQ(cudaEventCreate(&start), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&stop), cudaSuccess);
  ASSERT_EQ(cudaEventCreateWithFlags(&untimed, cudaEventDisableTiming), cudaSuccess);
  float ms = -1;
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaErrorInvalidResourceHandle);  // never recorded
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventQuery(start), cudaSuccess);
  Device<float> buffer(std::vector<float>(1 << 16, 0.0f));
  dj::emu::hold_device(0, true);
  ASSERT_EQ(cudaEventRecord(start, nullptr), cudaSuccess);
  dj::cuda::launch("fill_kernel", fill_kernel, 256, 256, 0, nullptr, buffer.get(), 2.0f, 1 << 16);
  ASSERT_EQ(cudaEventRecord(stop, nullptr), cudaSuccess);
  ASSERT_EQ(cudaEventRecord(untimed, nullptr), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(stop), cudaErrorNotReady);
  EXPECT_EQ(cudaStreamQuery(nullptr), cudaErrorNotReady);
  dj::emu::hold_device(0, false);
  ASSERT_EQ(cudaEventSynchronize(stop), cudaSuccess);
  EXPECT_EQ(cudaEventQuery(stop), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
  EXPECT_GE(ms, 0.0f);
  EXPECT_EQ(cudaEventElapsedTime(&ms, start, untimed), cudaErrorInvalidResourceHandle);
  EXPECT_EQ(cudaEventDestroy(start), cudaSuccess);
  EXPECT_EQ(cudaEventDestroy(start), cudaErrorInvalidResourceHandle);
  cudaEventDestroy(stop);
  cudaEventDestroy(untimed);
  cudaGetLastError();
}

// ---- faults and overruns name the kernel ------------------------------------------------------------
__global__ void overrun_kernel(float* out, int stride) { out[threadIdx.x * stride] = 1.0f; }

void overrun(int count, int stride) {
  float* p = nullptr;
  dj::emu::test::ok(cudaMalloc(reinterpret_cast<void**>(&p), static_cast<size_t>(count) * sizeof(float)), "cudaMalloc");
  dj::cuda::launch("overrun_kernel", overrun_kernel, 1, 32, 0, nullptr, p, stride);
  cudaDeviceSynchronize();
}

TEST(Faults, GuardPageHitNamesTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(overrun(64, 64), "fault in kernel overrun_kernel, block \\(0, 0, 0\\) thread .* past the end of the 256-byte allocation");
}

TEST(Faults, WriteIntoTheCanaryNamesTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(overrun(31, 1), "kernel overrun_kernel: the 124-byte allocation at .* was written past its end");
}

// Launched with 256 bytes of dynamic shared memory: every thread writes just past them, into the
// guard page, whichever thread runs first. (Strides of a page would send later threads past the
// guard page, to whatever is mapped there.)
__global__ void shared_overrun_kernel(float* out) {
  DJ_DYNAMIC_SHARED(smem);
  reinterpret_cast<float*>(smem)[64 + threadIdx.x] = 1.0f;
  out[0] = 0.0f;
}

TEST(Faults, SharedMemoryOverrunNamesTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto run = [] {
    Device<float> out(std::vector<float>(1, 0.0f));
    dj::cuda::launch("shared_overrun_kernel", shared_overrun_kernel, 1, 32, 256, nullptr, out.get());
    cudaDeviceSynchronize();
  };
  EXPECT_DEATH(run(), "fault in kernel shared_overrun_kernel.*dynamic shared memory");
}

}  // namespace
