// What the workbench of every CUDA model op (tests/gpu/check_<op>.cpp) shares: host-side type
// helpers (bf16 rounding through kernels/core/dtype.h's conversions, as the device rounds), uploads
// and downloads, bit comparisons, and the benchmark helpers with the H200's measured ceilings. See
// check.h for the conventions of a check.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <numbers>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/core/dtype.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/rotary.h"
#include "kernels/cuda/ops.h"
#include "tests/gpu/check.h"
#include "trainer/optim/adamw.h"

namespace dj::gpucheck {

namespace dc = dj::cuda;
using bf16 = __nv_bfloat16;

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* fmt, ...) {
  char buffer[256];
  va_list args;
  va_start(args, fmt);
  std::vsnprintf(buffer, sizeof buffer, fmt, args);
  va_end(args);
  return buffer;
}

template <typename T>
constexpr bool kIsBf16 = std::is_same_v<T, bf16>;

template <typename T>
const char* type_name() {
  return kIsBf16<T> ? "bf16" : "f32";
}

// Threshold for an output of type T.
template <typename T>
double tolerance() {
  return kIsBf16<T> ? 1e-2 : 1e-5;
}
// Threshold for an fp32 output computed from inputs of type T (bf16 inputs are exact in fp32, but
// the device's fp32 accumulation order differs from the CPU's double).
template <typename T>
double tolerance_f32_out() {
  return kIsBf16<T> ? 1e-4 : 1e-5;
}

// The bf16 value nearest to `value` (ties to even), as the device rounds on store.
inline float round_bf16(float value) { return bf16_to_float(float_to_bf16(value)); }

// Values of type T, held as floats (rounded to bf16 when T is bf16).
template <typename T>
std::vector<float> representable(std::vector<float> values) {
  if constexpr (kIsBf16<T>)
    for (float& v : values) v = round_bf16(v);
  return values;
}

template <typename T>
std::vector<float> inputs(Context& ctx, size_t count, float stddev = 1.0f, float mean = 0.0f) {
  std::vector<float> values = ctx.normal(count, stddev);
  for (float& v : values) v += mean;
  return representable<T>(std::move(values));
}

template <typename T>
std::vector<T> to_type(const std::vector<float>& values) {
  if constexpr (kIsBf16<T>) {
    std::vector<T> out(values.size());
    for (size_t i = 0; i < values.size(); ++i) out[i] = __float2bfloat16_rn(values[i]);
    return out;
  } else {
    return values;
  }
}

template <typename T>
std::vector<float> to_float(const std::vector<T>& values) {
  if constexpr (kIsBf16<T>) {
    std::vector<float> out(values.size());
    for (size_t i = 0; i < values.size(); ++i) out[i] = __bfloat162float(values[i]);
    return out;
  } else {
    return values;
  }
}

template <typename T>
DeviceBuffer<T> upload(const std::vector<float>& values) {
  return DeviceBuffer<T>(to_type<T>(values));
}

template <typename T>
std::vector<float> download(const DeviceBuffer<T>& buffer) {
  return to_float(buffer.download());
}

inline std::vector<double> to_double(const std::vector<float>& values) {
  return std::vector<double>(values.begin(), values.end());
}

inline bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Number of values of two equal-length float vectors whose bits differ.
inline size_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  size_t count = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++count;
  return count + (a.size() > b.size() ? a.size() - b.size() : b.size() - a.size());
}

inline std::vector<int32_t> random_ids(Context& ctx, size_t count, int32_t lo, int32_t hi) {
  std::uniform_int_distribution<int32_t> dist(lo, hi - 1);
  std::vector<int32_t> ids(count);
  for (auto& id : ids) id = dist(ctx.rng);
  return ids;
}


// ---- benchmarks ---------------------------------------------------------------------------------


// Ceilings measured on an H200 of this workplace (KINDS.md): device-to-device copy 4.3 TB/s
// (read + write), 8192^3 bf16 matrix product 790 TFLOP/s on random data. Datasheet: 4.8 TB/s, 989.
inline constexpr double kBandwidth = 4.3e12;
inline constexpr double kBf16Flops = 790e12;

inline size_t sz(int64_t count) { return static_cast<size_t>(count); }

// Fills a device buffer with normal random values without generating them all on the host: one
// block of 2^20 host values, then doubling device-to-device copies.
template <typename T>
void fill_random(Context& ctx, DeviceBuffer<T>& buffer, float stddev = 1.0f) {
  const size_t total = buffer.size();
  const size_t block = std::min<size_t>(total, size_t(1) << 20);
  const auto host = to_type<T>(representable<T>(ctx.normal(block, stddev)));
  DJ_CUDA(cudaMemcpy(buffer.get(), host.data(), block * sizeof(T), cudaMemcpyHostToDevice));
  for (size_t done = block; done < total;) {
    const size_t chunk = std::min(done, total - done);
    DJ_CUDA(cudaMemcpy(buffer.get() + done, buffer.get(), chunk * sizeof(T),
                       cudaMemcpyDeviceToDevice));
    done += chunk;
  }
}

inline void bench_row(Context& ctx, const std::string& name, double ms, double flops, double bytes,
               const std::string& note = "") {
  BenchRow row;
  row.name = name;
  row.ms = ms;
  row.tflops = flops > 0 ? flops / (ms * 1e-3) / 1e12 : 0.0;
  row.gbps = bytes / (ms * 1e-3) / 1e9;
  row.floor_ms = std::max(flops / kBf16Flops, bytes / kBandwidth) * 1e3;
  row.note = note;
  ctx.bench(row);
}


}  // namespace dj::gpucheck
