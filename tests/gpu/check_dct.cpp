// The DiJiang feature map's projection, two ways: the kernels' shared-memory GEMM with the stored
// P = C · diag(t) (dj::cuda::feature_map_forward), against the same map through cuFFT, where
// x · C is an orthonormal DCT-III of each row done as a batched real FFT between a twiddle kernel
// and a kernel applying diag(t) and the softmax (DctFeatureMap, dct_cufft.h / check_dct_cufft.cu).
//
// Why: the projection could be a DCT of O(d log d) operations instead of a d x d product. The
// kernels keep the GEMM all the same: the stored P is what reference checkpoints hold (it is
// applied exactly as stored, not regenerated from t), the product fuses into the attention
// prologue (x read once, s written once, nothing else), while the cuFFT path needs extra passes
// over memory (x -> half spectra -> v -> s: about 24 d + 16 bytes per row against 8 d). The
// benchmark measures what that choice costs or saves at the training shapes; the check makes sure
// the two compute the same function, so the timings compare like with like.
//
// dct_cufft_feature_map: fresh random x ~ N(0, 1) and t ~ N(0, 1) per shape, every output poisoned
// with NaN first; d = 32, 64, 80, 128 and 256 (Pythia's head sizes; above 128 the GEMM kernel streams
// P through shared memory) and 20 (another even width), rows 1 to 4096.
//   - cuFFT x · P (no softmax) against x · P in double with P from cpu::dct_projection<double>;
//   - cuFFT softmax(x · P) against cpu::feature_map_forward<double> (same P), also in place (s = x);
//   - cuFFT against the CUDA GEMM kernel (P rounded to fp32, as the kernels store it).
// Thresholds: 1e-5 relative L2 (fp32 paths), for the GEMM-against-cuFFT comparison too: both are
// fp32 sums of d terms of O(1) values, each expected well inside it.
//
// dct_cufft_vs_gemm (benchmark): fp32, B = 4, H = 16, rows = B H L for L = 2048 and 16384, d = 64,
// 80, 128 and 256. One row per path (ms; GB/s counting the op's own traffic, x read and s written, 8 d bytes
// per row, for both paths; floor = max(GEMM FLOPs / fp32 FFMA peak, those bytes / bandwidth) for the
// GEMM, the bytes alone for cuFFT, whose O(d log d) FLOPs are negligible), one with the cuFFT path's
// three passes timed one by one, and one naming the faster.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cuda/dijiang_attention.h"
#include "tests/gpu/check.h"
#include "tests/gpu/dct_cufft.h"

namespace {

using dj::gpucheck::BenchRow;
using dj::gpucheck::Context;
using dj::gpucheck::DctFeatureMap;
using dj::gpucheck::DeviceBuffer;

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }
std::vector<float> to_float(const std::vector<double>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]);
  return f;
}

// P = C diag(t) in double (cpu::dct_projection), t: d fp32 values.
std::vector<double> projection(const std::vector<float>& t) {
  const int64_t d = static_cast<int64_t>(t.size());
  const std::vector<double> td = to_double(t);
  std::vector<double> P(static_cast<size_t>(d * d));
  dj::cpu::dct_projection<double>(P.data(), td.data(), d);
  return P;
}

std::vector<double> download(const DeviceBuffer<float>& b) { return to_double(b.download()); }

DeviceBuffer<float> poisoned(Context& ctx, size_t count) {
  DeviceBuffer<float> b(count);
  ctx.poison(b);
  return b;
}

void check_dct_feature_map(Context& ctx, int64_t rows, int64_t d) {
  const std::string dims = "fp32 rows=" + std::to_string(rows) + " d=" + std::to_string(d);
  const size_t count = static_cast<size_t>(rows * d);
  const std::vector<float> t = ctx.normal(static_cast<size_t>(d));
  const std::vector<double> P = projection(t);
  const std::vector<float> x = ctx.normal(count);
  const std::vector<double> xd = to_double(x);

  std::vector<double> z_ref(count), s_ref(count);
  dj::cpu::gemm<double>(false, false, rows, d, d, 1.0, xd.data(), P.data(), 0.0, z_ref.data());
  dj::cpu::feature_map_forward<double>(s_ref.data(), xd.data(), P.data(), rows, d);

  DeviceBuffer<float> x_dev(x);
  const DctFeatureMap fm(rows, d, t, ctx.stream);

  auto z_dev = poisoned(ctx, count);
  fm.project(z_dev.get(), x_dev.get());
  ctx.sync("DctFeatureMap::project");
  ctx.compare("dct cufft x.P vs cpu " + dims, download(z_dev), z_ref, 1e-5);

  auto s_dev = poisoned(ctx, count);
  fm.forward(s_dev.get(), x_dev.get());
  ctx.sync("DctFeatureMap::forward");
  const std::vector<double> s_fft = download(s_dev);
  ctx.compare("dct cufft feature_map vs cpu " + dims, s_fft, s_ref, 1e-5);

  DeviceBuffer<float> inplace_dev(x);
  fm.forward(inplace_dev.get(), inplace_dev.get());
  ctx.sync("DctFeatureMap::forward (in place)");
  ctx.compare("dct cufft feature_map in place vs cpu " + dims, download(inplace_dev), s_ref, 1e-5);

  DeviceBuffer<float> P_dev(to_float(P));
  auto g_dev = poisoned(ctx, count);
  dj::cuda::feature_map_forward<float>(g_dev.get(), x_dev.get(), P_dev.get(), rows, d, ctx.stream);
  ctx.sync("feature_map_forward");
  ctx.compare("dct cufft feature_map vs cuda gemm " + dims, s_fft, download(g_dev), 1e-5);
}

}  // namespace

DJ_GPU_CHECK(dct_cufft_feature_map) {
  const int64_t shapes[][2] = {{1, 64},   {37, 64},  {1000, 64}, {1, 128},  {333, 128}, {4096, 128},
                               {300, 80}, {45, 20},  {70, 32},   {1, 256},  {300, 256}};
  for (const auto& s : shapes) check_dct_feature_map(ctx, s[0], s[1]);
}

namespace {

// Ceilings of the H200: device-to-device copy 4.3 TB/s as measured on this workplace's machines
// (as in check_attention.cpp); fp32 FFMA 67 TFLOP/s (datasheet: 132 SMs x 128 lanes x 2 x 1.98 GHz),
// which the fp32 GEMM kernel uses (no tensor cores for fp32).
constexpr double kPeakBytes = 4.3e12;
constexpr double kPeakFp32 = 67e12;

std::string fixed2(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}
std::string fixed3(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

// An fp32 device tensor of `count` N(0, 1) values: 1 Mi values drawn on the host, then replicated
// on the device by doubling copies.
DeviceBuffer<float> random_f32(Context& ctx, size_t count) {
  DeviceBuffer<float> b(count);
  const size_t seed_count = std::min<size_t>(count, size_t{1} << 20);
  const std::vector<float> v = ctx.normal(seed_count);
  DJ_CUDA(cudaMemcpy(b.get(), v.data(), seed_count * sizeof(float), cudaMemcpyHostToDevice));
  for (size_t have = seed_count; have < count;) {
    const size_t n = std::min(have, count - have);
    DJ_CUDA(cudaMemcpy(b.get() + have, b.get(), n * sizeof(float), cudaMemcpyDeviceToDevice));
    have += n;
  }
  return b;
}

}  // namespace

DJ_GPU_BENCH(dct_cufft_vs_gemm) {
  const int64_t B = 4, H = 16;
  for (const int64_t d : {int64_t{64}, int64_t{128}, int64_t{256}, int64_t{80}}) {
    const std::vector<float> t = ctx.normal(static_cast<size_t>(d));
    DeviceBuffer<float> P_dev(to_float(projection(t)));
    for (const int64_t L : {int64_t{2048}, int64_t{16384}}) {
      const int64_t rows = B * H * L;
      const size_t count = static_cast<size_t>(rows * d);
      auto x = random_f32(ctx, count);
      DeviceBuffer<float> s(count);
      const DctFeatureMap fm(rows, d, t, ctx.stream);
      const std::string dims = "fp32 B=4 H=16 d=" + std::to_string(d) + " L=" + std::to_string(L);
      const int repeats = L >= 16384 ? 5 : 10;

      const double r = static_cast<double>(rows), dd = static_cast<double>(d);
      const double bytes = 8.0 * dd * r;                     // x read, s written
      const double fft_bytes = (24.0 * dd + 16.0) * r;       // what the three passes move
      const double gemm_flops = 2.0 * dd * dd * r;
      const double mem_floor_ms = 1e3 * bytes / kPeakBytes;

      const double gemm_ms = ctx.time_ms(
          [&] { dj::cuda::feature_map_forward<float>(s.get(), x.get(), P_dev.get(), rows, d, ctx.stream); },
          repeats, 2);
      {
        BenchRow row;
        row.name = "feature_map gemm (stored P) " + dims;
        row.ms = gemm_ms;
        row.tflops = gemm_flops / (gemm_ms * 1e-3) / 1e12;
        row.gbps = bytes / (gemm_ms * 1e-3) / 1e9;
        row.floor_ms = std::max(1e3 * gemm_flops / kPeakFp32, mem_floor_ms);
        row.note = std::string(gemm_flops / kPeakFp32 > bytes / kPeakBytes ? "fp32 FFMA floor" : "memory floor") +
                   ", " + fixed2(gemm_ms / row.floor_ms) + "x floor";
        ctx.bench(row);
      }

      const double fft_ms = ctx.time_ms([&] { fm.forward(s.get(), x.get()); }, repeats, 2);
      {
        BenchRow row;
        row.name = "feature_map cufft dct-iii " + dims;
        row.ms = fft_ms;
        row.gbps = bytes / (fft_ms * 1e-3) / 1e9;
        row.floor_ms = mem_floor_ms;
        row.note = fixed2(fft_ms / row.floor_ms) + "x floor; passes move " + fixed2(fft_bytes / bytes) +
                   "x the bytes: " + fixed2(fft_bytes / (fft_ms * 1e-3) / 1e9) + " GB/s moved; scratch " +
                   std::to_string(fm.scratch_bytes() >> 20) + " MiB";
        ctx.bench(row);
      }

      // The passes one by one (each timed from a cold cache, so they add up to a little more).
      const double pre_ms = ctx.time_ms([&] { fm.pre(x.get()); }, repeats, 1);
      const double c2r_ms = ctx.time_ms([&] { fm.fft(s.get()); }, repeats, 1);
      const double post_ms = ctx.time_ms([&] { fm.post(s.get(), true); }, repeats, 1);
      {
        BenchRow row;
        row.name = "feature_map cufft passes " + dims;
        row.ms = pre_ms + c2r_ms + post_ms;
        row.note = "pre " + fixed3(pre_ms) + " ms, C2R " + fixed3(c2r_ms) + " ms, diag(t)+softmax " +
                   fixed3(post_ms) + " ms";
        ctx.bench(row);
      }

      BenchRow verdict;
      verdict.name = "feature_map faster " + dims;
      verdict.note = gemm_ms <= fft_ms
                         ? "gemm (stored P) faster, " + fixed2(fft_ms / gemm_ms) + "x cufft's speed"
                         : "cufft dct-iii faster, " + fixed2(gemm_ms / fft_ms) + "x gemm's speed";
      ctx.bench(verdict);
    }
  }
}
