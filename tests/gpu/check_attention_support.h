// What the workbenches of the attention kernels (check_dijiang_feature_map.cpp,
// check_decay_attention.cpp, check_dijiang_group_norm_gate.cpp, check_attention.cpp) share: bf16
// storage on the host, uploads and downloads, the reference inputs, and the benchmark ceilings.
// How these checks measure:
// Every check draws fresh inputs from ctx.rng, poisons every output with NaN first, and compares
// with the CPU op in fp64:
//   - fp32 inputs: the CPU op on the same values; threshold 1e-5 relative L2;
//   - bf16 inputs: the CPU op on the bf16-rounded inputs (so only the kernel's own rounding is
//     measured: bf16 intermediates for the tensor cores, bf16 outputs); threshold 1e-2;
//   - the log-gamma gradient, a sum of O(BH n²) terms of both signs that can cancel to far less
//     than its terms, is measured against their root-sum-square instead of its value (dlog_scale),
//     with the same thresholds.
// Shapes include the odd cases: n = 1, n < chunk, n = k chunk ± 1, H = 1, widths that are not
// multiples of 16 (padded tiles) or of 8 (no 16-byte vector path), several 64-wide slices, chunk
// 16/32/128, and every Pythia head size: 64 and 128 (the tuned kernels) in the base cases, 32, 80
// and 256 in the *_heads cases (with 130..250 around the 128-wide column blocks of d > 128).
#pragma once
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <numbers>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/attention.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/core/dtype.h"
#include "kernels/cuda/dijiang_attention.h"
#include "tests/gpu/check.h"

namespace dj::gpucheck::attention_check {


using dj::bf16_to_float;
using dj::float_to_bf16;
using dj::gpucheck::BenchRow;
using dj::gpucheck::Context;
using dj::gpucheck::DeviceBuffer;
using dj::gpucheck::kEmulated;
using bf16 = __nv_bfloat16;

// bf16 on the host: kernels/core/dtype.h (float_to_bf16, bf16_to_float; round to nearest even).

// Device storage of T: float, or the raw bits of bf16.
template <typename T>
using Store = std::conditional_t<std::is_same_v<T, float>, float, uint16_t>;

template <typename T>
const char* type_name() {
  return std::is_same_v<T, float> ? "fp32" : "bf16";
}

// Values representable in T (bf16: rounded).
template <typename T>
std::vector<float> representable(std::vector<float> v) {
  if constexpr (!std::is_same_v<T, float>)
    for (float& x : v) x = bf16_to_float(float_to_bf16(x));
  return v;
}

template <typename T>
DeviceBuffer<Store<T>> upload(const std::vector<float>& v) {
  std::vector<Store<T>> s(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if constexpr (std::is_same_v<T, float>)
      s[i] = v[i];
    else
      s[i] = float_to_bf16(v[i]);
  }
  return DeviceBuffer<Store<T>>(s);
}

template <typename T>
std::vector<double> download(const DeviceBuffer<Store<T>>& b) {
  const std::vector<Store<T>> s = b.download();
  std::vector<double> v(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if constexpr (std::is_same_v<T, float>)
      v[i] = s[i];
    else
      v[i] = bf16_to_float(s[i]);
  }
  return v;
}
inline std::vector<double> download_f32(const DeviceBuffer<float>& b) {
  const std::vector<float> s = b.download();
  return {s.begin(), s.end()};
}

template <typename T>
T* dptr(const DeviceBuffer<Store<T>>& b) {
  return reinterpret_cast<T*>(b.get());
}

// A poisoned output buffer of count values.
template <typename T>
DeviceBuffer<Store<T>> output(Context& ctx, size_t count) {
  DeviceBuffer<Store<T>> b(count);
  ctx.poison(b);
  return b;
}
inline DeviceBuffer<float> output_f32(Context& ctx, size_t count) {
  DeviceBuffer<float> b(count);
  ctx.poison(b);
  return b;
}

inline std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }
inline std::vector<float> to_float(const std::vector<double>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]);
  return f;
}

template <typename T>
double threshold() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-2;
}

// log γ_h of the reference schedule: γ_h = 1 − exp(ℓ_h), ℓ = linspace(log(1/32), log(1/512), H).
inline std::vector<float> reference_log_gamma(int64_t H) {
  std::vector<float> lg(static_cast<size_t>(H));
  const double a = std::log(1.0 / 32), b = std::log(1.0 / 512);
  for (int64_t h = 0; h < H; ++h) {
    const double l = H == 1 ? a : a + (b - a) * static_cast<double>(h) / static_cast<double>(H - 1);
    lg[static_cast<size_t>(h)] = static_cast<float>(std::log1p(-std::exp(l)));
  }
  return lg;
}

// Positive features of sum ~1 per row (what the feature map produces).
inline std::vector<float> features(Context& ctx, size_t rows, int64_t m) {
  return ctx.uniform(rows * static_cast<size_t>(m), 0.f, 2.f / static_cast<float>(m));
}

// P = C diag(t), t ~ N(0, 1), as fp32.
inline std::vector<float> projection(Context& ctx, int64_t d) {
  const std::vector<float> tf = ctx.normal(static_cast<size_t>(d));
  const std::vector<double> t(tf.begin(), tf.end());
  std::vector<double> P(static_cast<size_t>(d * d));
  dj::cpu::dct_projection<double>(P.data(), t.data(), d);
  return to_float(P);
}

inline std::string shape_name(const char* what, const char* type, const std::string& dims) {
  return std::string(what) + " " + type + " " + dims;
}


// ---- benchmarks ------------------------------------------------------------------------------------
// Ceilings of the H200 as measured on this workplace's machines (.library/device/KINDS.md): dense
// bf16 matrix products 790 TFLOP/s on random data, device-to-device copy 4.3 TB/s (datasheet:
// 990 TFLOP/s, 4.8 TB/s). The floor of a row is max(FLOPs / 790 T, bytes / 4.3 TB/s).
inline constexpr double kPeakFlops = 790e12;
inline constexpr double kPeakBytes = 4.3e12;

inline double floor_ms(double flops, double bytes) { return 1e3 * std::max(flops / kPeakFlops, bytes / kPeakBytes); }

// One row of the benchmark table: `flops` and `bytes` of one call give the rates and the floor.
inline void bench_row(Context& ctx, const std::string& name, double ms, double flops, double bytes) {
  BenchRow r;
  r.name = name;
  r.ms = ms;
  r.tflops = flops / (ms * 1e-3) / 1e12;
  r.gbps = bytes / (ms * 1e-3) / 1e9;
  r.floor_ms = floor_ms(flops, bytes);
  ctx.bench(r);
}

// A bf16 device tensor of `count` random N(0, 1) values: 1 Mi values drawn on the host, then
// replicated on the device by doubling copies.
inline DeviceBuffer<uint16_t> random_bf16(Context& ctx, size_t count) {
  DeviceBuffer<uint16_t> b(count);
  const size_t seed_count = std::min<size_t>(count, size_t{1} << 20);
  const std::vector<float> v = ctx.normal(seed_count);
  std::vector<uint16_t> bits(seed_count);
  for (size_t i = 0; i < seed_count; ++i) bits[i] = float_to_bf16(v[i]);
  DJ_CUDA(cudaMemcpy(b.get(), bits.data(), seed_count * sizeof(uint16_t), cudaMemcpyHostToDevice));
  for (size_t have = seed_count; have < count;) {
    const size_t n = std::min(have, count - have);
    DJ_CUDA(cudaMemcpy(b.get() + have, b.get(), n * sizeof(uint16_t), cudaMemcpyDeviceToDevice));
    have += n;
  }
  return b;
}

inline bf16* bp(const DeviceBuffer<uint16_t>& b) { return reinterpret_cast<bf16*>(b.get()); }

inline std::string fmt1(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}


}  // namespace dj::gpucheck::attention_check
