// Device checks of the CUDA model ops (kernels/cuda/ops.h) against their CPU references, and
// benchmarks of the hot ones at the 410M model's shapes.
//
// Every check draws fresh inputs from ctx.rng, poisons every output with NaN first, and compares
// with the CPU op (in double where the CPU op has a double version) by relative L2 error. bf16 paths
// are fed inputs already rounded to bf16, so the reference sees exactly the values the device sees:
// what remains is the device's fp32 arithmetic and one rounding of each bf16 output.
// Thresholds: fp32 outputs 1e-5; fp32 outputs of bf16 inputs (products, column sums) 1e-4; bf16
// outputs 1e-2. Ops designed to be bit-identical to the CPU (AdamW, clipping, rotary in fp32,
// embedding, conversions) are also checked for exact equality.
//
// The GEMM and Linear references are cpu::gemm / cpu::linear_* in double (on the GPU machine the
// device-check build compiles cpu::gemm without BLAS, see tests/gpu/CMakeLists.txt).
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
namespace {

namespace dc = dj::cuda;
using bf16 = __nv_bfloat16;

// ---- helpers ------------------------------------------------------------------------------------

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
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

float round_bf16(float value) { return __bfloat162float(__float2bfloat16_rn(value)); }

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

std::vector<double> to_double(const std::vector<float>& values) {
  return std::vector<double>(values.begin(), values.end());
}

bool bits_equal(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Number of values of two equal-length float vectors whose bits differ.
size_t bit_mismatches(const std::vector<float>& a, const std::vector<float>& b) {
  size_t count = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) ++count;
  return count + (a.size() > b.size() ? a.size() - b.size() : b.size() - a.size());
}

std::vector<int32_t> random_ids(Context& ctx, size_t count, int32_t lo, int32_t hi) {
  std::uniform_int_distribution<int32_t> dist(lo, hi - 1);
  std::vector<int32_t> ids(count);
  for (auto& id : ids) id = dist(ctx.rng);
  return ids;
}

// ---- references for products ---------------------------------------------------------------------

void ref_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
              const double* B, double beta, double* C) {
  cpu::gemm<double>(ta, tb, M, N, K, alpha, A, B, beta, C);
}
void ref_linear_forward(double* y, const double* x, const double* W, const double* b, int64_t rows,
                        int64_t in, int64_t out) {
  cpu::linear_forward<double>(y, x, W, b, rows, in, out);
}
void ref_linear_backward(double* dx, double* dW, double* db, const double* dy, const double* x,
                         const double* W, int64_t rows, int64_t in, int64_t out, bool accumulate_dx) {
  cpu::linear_backward<double>(dx, dW, db, dy, x, W, rows, in, out, accumulate_dx);
}

// ---- GEMM ---------------------------------------------------------------------------------------

template <typename TA, typename TC>
void check_gemm(Context& ctx, dc::Blas& blas, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
                float beta) {
  const float alpha = 1.25f;
  const auto A = inputs<TA>(ctx, static_cast<size_t>(M * K));
  const auto B = inputs<TA>(ctx, static_cast<size_t>(K * N));
  const auto C0 = beta != 0.0f ? inputs<TC>(ctx, static_cast<size_t>(M * N))
                               : std::vector<float>(static_cast<size_t>(M * N), 0.0f);
  auto Ad = to_double(A), Bd = to_double(B), Cd = to_double(C0);
  ref_gemm(ta, tb, M, N, K, alpha, Ad.data(), Bd.data(), beta, Cd.data());

  auto dA = upload<TA>(A);
  auto dB = upload<TA>(B);
  DeviceBuffer<TC> dC(static_cast<size_t>(M * N));
  if (beta == 0.0f)
    ctx.poison(dC);
  else
    dC.upload(to_type<TC>(C0));
  dc::gemm<TA, TC>(blas, ta, tb, M, N, K, alpha, dA.get(), dB.get(), beta, dC.get(), ctx.stream);
  ctx.sync("gemm");
  const double threshold = kIsBf16<TC> ? 1e-2 : tolerance_f32_out<TA>();
  ctx.compare(format("gemm %s->%s %c%c %lldx%lldx%lld beta=%g", type_name<TA>(), type_name<TC>(),
                     ta ? 'T' : 'N', tb ? 'T' : 'N', static_cast<long long>(M),
                     static_cast<long long>(N), static_cast<long long>(K), beta),
              to_double(download(dC)), Cd, threshold);
}

template <typename TA, typename TC>
void check_gemm_all(Context& ctx, dc::Blas& blas) {
  const int64_t shapes[][3] = {{1, 1, 1}, {37, 53, 29}, {257, 130, 67}};
  int index = 0;
  for (const auto& s : shapes) {
    for (int t = 0; t < 4; ++t) {
      const float beta = (index++ % 2 == 1) ? 0.5f : 0.0f;
      check_gemm<TA, TC>(ctx, blas, s[0], s[1], s[2], (t & 1) != 0, (t & 2) != 0, beta);
    }
  }
  if (kEmulated)
    check_gemm<TA, TC>(ctx, blas, 128, 192, 256, false, true, 0.0f);
  else
    check_gemm<TA, TC>(ctx, blas, 512, 768, 1024, false, true, 0.0f);
}

// ---- Linear -------------------------------------------------------------------------------------

template <typename T>
void check_linear(Context& ctx, dc::Blas& blas, int64_t rows, int64_t in, int64_t out) {
  const std::string shape = format("%s %lldx%lld->%lld", type_name<T>(), static_cast<long long>(rows),
                                   static_cast<long long>(in), static_cast<long long>(out));
  const auto x = inputs<T>(ctx, static_cast<size_t>(rows * in));
  const auto W = inputs<T>(ctx, static_cast<size_t>(out * in), 1.0f / std::sqrt(float(in)));
  const auto b = inputs<T>(ctx, static_cast<size_t>(out), 0.5f);
  auto xd = to_double(x), Wd = to_double(W), bd = to_double(b);
  std::vector<double> y_ref(static_cast<size_t>(rows * out));
  ref_linear_forward(y_ref.data(), xd.data(), Wd.data(), bd.data(), rows, in, out);
  std::vector<double> gelu_ref(y_ref.size());
  cpu::gelu_forward<double>(gelu_ref.data(), y_ref.data(), static_cast<int64_t>(y_ref.size()),
                            cpu::GeluKind::Tanh);

  auto dx_in = upload<T>(x);
  auto dW = upload<T>(W);
  auto db = upload<T>(b);
  DeviceBuffer<T> y(y_ref.size()), pre(y_ref.size()), act(y_ref.size());
  ctx.poison(y);
  dc::linear_forward<T>(blas, y.get(), dx_in.get(), dW.get(), db.get(), rows, in, out, ctx.stream);
  ctx.sync("linear_forward");
  ctx.compare("linear_forward " + shape, to_double(download(y)), y_ref, tolerance<T>());

  // Fused bias + tanh GELU (the unfused fallback when out % 8 != 0), with and without `pre`.
  // cuBLASLt's GELU epilogue may evaluate tanh with a fast approximation: looser fp32 threshold.
  const double gelu_threshold = kIsBf16<T> ? 1e-2 : 1e-3;
  ctx.poison(pre);
  ctx.poison(act);
  dc::linear_forward_gelu_tanh<T>(blas, act.get(), pre.get(), dx_in.get(), dW.get(), db.get(), rows,
                                  in, out, ctx.stream);
  ctx.sync("linear_forward_gelu_tanh");
  const std::string path = out % 8 == 0 ? "fused unless cuBLASLt declines" : "unfused (out % 8)";
  ctx.compare("linear_gelu_tanh pre " + shape, to_double(download(pre)), y_ref, tolerance<T>(), path);
  ctx.compare("linear_gelu_tanh y " + shape, to_double(download(act)), gelu_ref, gelu_threshold, path);
  ctx.poison(act);
  dc::linear_forward_gelu_tanh<T>(blas, act.get(), nullptr, dx_in.get(), dW.get(), db.get(), rows,
                                  in, out, ctx.stream);
  ctx.sync("linear_forward_gelu_tanh (no pre)");
  ctx.compare("linear_gelu_tanh y (no pre) " + shape, to_double(download(act)), gelu_ref,
              gelu_threshold, "fused unless cuBLASLt declines");

  // Backward, accumulating into random dx, dW, db (and once more with a poisoned dx, overwritten).
  const auto dy = inputs<T>(ctx, static_cast<size_t>(rows * out));
  const auto dx0 = inputs<T>(ctx, static_cast<size_t>(rows * in));
  const auto dW0 = ctx.normal(static_cast<size_t>(out * in));
  const auto db0 = ctx.normal(static_cast<size_t>(out));
  auto dyd = to_double(dy);
  auto dx_ref = to_double(dx0), dW_ref = to_double(dW0), db_ref = to_double(db0);
  ref_linear_backward(dx_ref.data(), dW_ref.data(), db_ref.data(), dyd.data(), xd.data(),
                               Wd.data(), rows, in, out, true);
  std::vector<double> dx_fresh(dx_ref.size());
  ref_linear_backward(dx_fresh.data(), nullptr, nullptr, dyd.data(), xd.data(), Wd.data(),
                               rows, in, out, false);

  auto ddy = upload<T>(dy);
  auto ddx = upload<T>(dx0);
  DeviceBuffer<float> ddW(dW0), ddb(db0);
  dc::linear_backward<T>(blas, ddx.get(), ddW.get(), ddb.get(), ddy.get(), dx_in.get(), dW.get(),
                         rows, in, out, true, ctx.stream);
  ctx.sync("linear_backward");
  ctx.compare("linear_backward dx+= " + shape, to_double(download(ddx)), dx_ref, tolerance<T>());
  ctx.compare("linear_backward dW+= " + shape, to_double(ddW.download()), dW_ref,
              tolerance_f32_out<T>());
  ctx.compare("linear_backward db+= " + shape, to_double(ddb.download()), db_ref,
              tolerance_f32_out<T>());
  ctx.poison(ddx);
  dc::linear_backward<T>(blas, ddx.get(), nullptr, nullptr, ddy.get(), dx_in.get(), dW.get(), rows,
                         in, out, false, ctx.stream);
  ctx.sync("linear_backward (dx only)");
  ctx.compare("linear_backward dx= " + shape, to_double(download(ddx)), dx_fresh, tolerance<T>());
}

// ---- LayerNorm ----------------------------------------------------------------------------------

template <typename T>
void check_layernorm(Context& ctx, int64_t rows, int64_t channels) {
  const std::string shape = format("%s %lldx%lld", type_name<T>(), static_cast<long long>(rows),
                                   static_cast<long long>(channels));
  const size_t n = static_cast<size_t>(rows * channels);
  const auto x = inputs<T>(ctx, n, 1.5f, 0.75f);
  const auto w = inputs<T>(ctx, static_cast<size_t>(channels), 0.2f, 1.0f);
  const auto b = inputs<T>(ctx, static_cast<size_t>(channels), 0.2f);
  const double eps = 1e-5;
  auto xd = to_double(x), wd = to_double(w), bd = to_double(b);
  std::vector<double> y_ref(n), mean_ref(static_cast<size_t>(rows)), rstd_ref(mean_ref.size());
  cpu::layernorm_forward<double>(y_ref.data(), mean_ref.data(), rstd_ref.data(), xd.data(),
                                 wd.data(), bd.data(), rows, channels, eps);

  auto dxin = upload<T>(x);
  auto dw_in = upload<T>(w);
  auto db_in = upload<T>(b);
  DeviceBuffer<T> y(n);
  DeviceBuffer<float> mean(mean_ref.size()), rstd(rstd_ref.size());
  ctx.poison(y);
  ctx.poison(mean);
  ctx.poison(rstd);
  dc::layernorm_forward<T>(y.get(), mean.get(), rstd.get(), dxin.get(), dw_in.get(), db_in.get(),
                           rows, channels, eps, ctx.stream);
  ctx.sync("layernorm_forward");
  ctx.compare("layernorm_forward y " + shape, to_double(download(y)), y_ref, tolerance<T>());
  ctx.compare("layernorm_forward mean " + shape, to_double(mean.download()), mean_ref, 1e-5);
  ctx.compare("layernorm_forward rstd " + shape, to_double(rstd.download()), rstd_ref, 1e-5);

  const auto dy = inputs<T>(ctx, n);
  const auto dx0 = inputs<T>(ctx, n);
  const auto dw0 = ctx.normal(static_cast<size_t>(channels));
  const auto db0 = ctx.normal(static_cast<size_t>(channels));
  auto dyd = to_double(dy);
  auto dx_ref = to_double(dx0), dw_ref = to_double(dw0), db_ref = to_double(db0);
  cpu::layernorm_backward<double>(dx_ref.data(), dw_ref.data(), db_ref.data(), dyd.data(),
                                  xd.data(), wd.data(), mean_ref.data(), rstd_ref.data(), rows,
                                  channels);
  auto ddy = upload<T>(dy);
  auto ddx = upload<T>(dx0);
  DeviceBuffer<float> ddw(dw0), ddb(db0);
  dc::layernorm_backward<T>(ddx.get(), ddw.get(), ddb.get(), ddy.get(), dxin.get(), dw_in.get(),
                            mean.get(), rstd.get(), rows, channels, ctx.stream);
  ctx.sync("layernorm_backward");
  ctx.compare("layernorm_backward dx+= " + shape, to_double(download(ddx)), dx_ref, tolerance<T>());
  ctx.compare("layernorm_backward dw+= " + shape, to_double(ddw.download()), dw_ref,
              tolerance_f32_out<T>());
  ctx.compare("layernorm_backward db+= " + shape, to_double(ddb.download()), db_ref,
              tolerance_f32_out<T>());
}

// ---- GELU ---------------------------------------------------------------------------------------
// GELU and its derivative are sums whose terms cancel in the negative tail: 0.5 x + 0.5 x erf(x/√2)
// (or tanh), Φ(x) + x φ(x), 0.5 (1 + tanh u) + 0.5 x (1 − tanh² u) u'. In fp32 each term carries its
// own rounding (an ulp of erf or tanh near −1 is about 6e-8), so near x = −4 the relative error of
// the cancelled result is ~1e-4 on any fp32 implementation, the CPU's in float included, and it
// grows without bound further out; one such value makes the whole n = 1 check. The errors are
// therefore measured against the sizes of the terms, |0.5 x| (1 + |erf|) and the like (elementwise,
// ‖got − expected‖₂ / ‖sizes‖₂): where nothing cancels that is the value itself, and a wrong
// constant or term still shows at its full size.

// The term sizes of gelu (y) and of dy · gelu' (dx) at x.
void gelu_term_sizes(std::vector<double>& y_size, std::vector<double>& dx_size, const std::vector<double>& x,
                     const std::vector<double>& dy, cpu::GeluKind kind) {
  y_size.resize(x.size());
  dx_size.resize(x.size());
  const double inv_sqrt2 = 1.0 / std::sqrt(2.0), inv_sqrt2pi = 1.0 / std::sqrt(2.0 * std::numbers::pi);
  const double sqrt2_over_pi = std::sqrt(2.0 / std::numbers::pi);
  for (size_t i = 0; i < x.size(); ++i) {
    const double v = x[i], a = std::fabs(v);
    if (kind == cpu::GeluKind::Erf) {
      const double e = std::fabs(std::erf(v * inv_sqrt2));
      y_size[i] = 0.5 * a * (1.0 + e);
      dx_size[i] = std::fabs(dy[i]) * (0.5 * (1.0 + e) + a * inv_sqrt2pi * std::exp(-0.5 * v * v));
    } else {
      const double th = std::tanh(sqrt2_over_pi * (v + 0.044715 * v * v * v));
      const double du = sqrt2_over_pi * (1.0 + 3 * 0.044715 * v * v);
      y_size[i] = 0.5 * a * (1.0 + std::fabs(th));
      dx_size[i] = std::fabs(dy[i]) * (0.5 * (1.0 + std::fabs(th)) + 0.5 * a * (1.0 + th * th) * du);
    }
  }
}

// Records ‖got − expected‖₂ / ‖sizes‖₂ through ctx.compare, naming the worst element in the note.
void compare_to_sizes(Context& ctx, const std::string& name, const std::vector<double>& got,
                      const std::vector<double>& expected, const std::vector<double>& sizes, double threshold) {
  std::vector<double> shifted(got.size());
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    shifted[i] = sizes[i] + (got[i] - expected[i]);
    if (std::fabs(got[i] - expected[i]) > std::fabs(got[worst] - expected[worst])) worst = i;
  }
  ctx.compare(name, shifted, sizes, threshold,
              got.empty() ? std::string()
                          : format("worst [%zu]: got %.9g, expected %.9g, term size %.3g", worst, got[worst],
                                   expected[worst], sizes[worst]));
}

template <typename T>
void check_gelu(Context& ctx, int64_t n, dc::GeluKind kind, bool misaligned) {
  const cpu::GeluKind cpu_kind = kind == dc::GeluKind::Erf ? cpu::GeluKind::Erf : cpu::GeluKind::Tanh;
  const std::string name = format("%s %s n=%lld%s", kind == dc::GeluKind::Erf ? "erf" : "tanh",
                                  type_name<T>(), static_cast<long long>(n),
                                  misaligned ? " misaligned" : "");
  const size_t count = static_cast<size_t>(n);
  const size_t shift = misaligned ? 1 : 0;
  const auto x = inputs<T>(ctx, count + shift, 2.0f);
  const auto dy = inputs<T>(ctx, count + shift);
  auto xd = to_double(std::vector<float>(x.begin() + static_cast<long>(shift), x.end()));
  auto dyd = to_double(std::vector<float>(dy.begin() + static_cast<long>(shift), dy.end()));
  std::vector<double> y_ref(count), dx_ref(count), y_size, dx_size;
  cpu::gelu_forward<double>(y_ref.data(), xd.data(), n, cpu_kind);
  cpu::gelu_backward<double>(dx_ref.data(), dyd.data(), xd.data(), n, cpu_kind);
  gelu_term_sizes(y_size, dx_size, xd, dyd, cpu_kind);

  auto dxb = upload<T>(x);
  auto ddy = upload<T>(dy);
  DeviceBuffer<T> y(count + shift), dx(count + shift);
  ctx.poison(y);
  ctx.poison(dx);
  dc::gelu_forward<T>(y.get() + shift, dxb.get() + shift, n, kind, ctx.stream);
  dc::gelu_backward<T>(dx.get() + shift, ddy.get() + shift, dxb.get() + shift, n, kind, ctx.stream);
  // In place: dx aliases dy.
  dc::gelu_backward<T>(ddy.get() + shift, ddy.get() + shift, dxb.get() + shift, n, kind, ctx.stream);
  ctx.sync("gelu");
  auto tail = [shift](std::vector<float> v) {
    return to_double(std::vector<float>(v.begin() + static_cast<long>(shift), v.end()));
  };
  compare_to_sizes(ctx, "gelu_forward (vs term sizes) " + name, tail(download(y)), y_ref, y_size, tolerance<T>());
  compare_to_sizes(ctx, "gelu_backward (vs term sizes) " + name, tail(download(dx)), dx_ref, dx_size,
                   tolerance<T>());
  compare_to_sizes(ctx, "gelu_backward in place (vs term sizes) " + name, tail(download(ddy)), dx_ref, dx_size,
                   tolerance<T>());
}

// ---- rotary -------------------------------------------------------------------------------------

template <typename T>
void check_rotary(Context& ctx, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims,
                  int64_t offset) {
  const double base = 10000.0;
  const std::string shape =
      format("%s BH=%lld T=%lld d=%lld r=%lld off=%lld", type_name<T>(), static_cast<long long>(BH),
             static_cast<long long>(T_len), static_cast<long long>(d),
             static_cast<long long>(rotary_dims), static_cast<long long>(offset));
  const size_t n = static_cast<size_t>(BH * T_len * d);
  // One table longer than the sequence: rows past T_len are simply not used.
  const dc::RotaryTable table(T_len + 3, rotary_dims, base, offset);
  for (const bool backward : {false, true}) {
    const auto x = inputs<T>(ctx, n);
    auto ref = x;
    if (backward)
      cpu::rotary_backward<float>(ref.data(), BH, T_len, d, rotary_dims, base, offset);
    else
      cpu::rotary_forward<float>(ref.data(), BH, T_len, d, rotary_dims, base, offset);
    ref = representable<T>(ref);  // bf16: the CPU's float result rounded like the device's store
    auto dxb = upload<T>(x);
    if (backward)
      dc::rotary_backward<T>(dxb.get(), table, BH, T_len, d, ctx.stream);
    else
      dc::rotary_forward<T>(dxb.get(), table, BH, T_len, d, ctx.stream);
    ctx.sync("rotary");
    const auto got = download(dxb);
    const std::string name = std::string(backward ? "rotary_backward " : "rotary_forward ") + shape;
    // fp32: the CPU's double rotation rounded once, bit for bit (a CPU reference built with FMA
    // contraction may differ in ~2^-28 of the values). bf16: the device rounds the double rotation
    // once, the reference rounds the CPU's float result again (a rare 1-ulp difference).
    ctx.compare(name, to_double(got), to_double(ref), kIsBf16<T> ? 1e-2 : 1e-6);
    if constexpr (!kIsBf16<T>)
      ctx.expect(name + " bit-identical", bits_equal(got, ref),
                 format("%zu of %zu values differ", bit_mismatches(got, ref), n));
  }
}

// ---- embedding ----------------------------------------------------------------------------------

template <typename T>
void check_embedding(Context& ctx, int64_t n, int64_t vocab, int64_t channels, int32_t id_range) {
  const std::string shape = format("%s n=%lld vocab=%lld C=%lld ids<%d", type_name<T>(),
                                   static_cast<long long>(n), static_cast<long long>(vocab),
                                   static_cast<long long>(channels), id_range);
  const auto table = inputs<T>(ctx, static_cast<size_t>(vocab * channels));
  // Ids from a narrow range repeat often: the scatter-add must add the repeats in order.
  const auto ids = random_ids(ctx, static_cast<size_t>(n), 0, id_range);
  std::vector<float> out_ref(static_cast<size_t>(n * channels));
  cpu::embedding_forward<float>(out_ref.data(), ids.data(), table.data(), n, vocab, channels);

  auto dtable_in = upload<T>(table);
  DeviceBuffer<int32_t> dids(ids);
  DeviceBuffer<T> out(out_ref.size());
  ctx.poison(out);
  dc::embedding_forward<T>(out.get(), dids.get(), dtable_in.get(), n, vocab, channels, ctx.stream);
  ctx.sync("embedding_forward");
  const auto got = download(out);
  ctx.compare("embedding_forward " + shape, to_double(got), to_double(out_ref), 1e-7);
  ctx.expect("embedding_forward exact " + shape, bits_equal(got, out_ref));

  const auto dout = inputs<T>(ctx, out_ref.size());
  auto dtable_ref = ctx.normal(static_cast<size_t>(vocab * channels));
  DeviceBuffer<float> dtable(dtable_ref);
  cpu::embedding_backward<float>(dtable_ref.data(), dout.data(), ids.data(), n, channels);
  auto ddout = upload<T>(dout);
  dc::embedding_backward<T>(dtable.get(), ddout.get(), dids.get(), n, vocab, channels, ctx.stream);
  ctx.sync("embedding_backward");
  const auto grad = dtable.download();
  ctx.compare("embedding_backward " + shape, to_double(grad), to_double(dtable_ref), 1e-6);
  ctx.expect("embedding_backward bit-identical " + shape, bits_equal(grad, dtable_ref),
             format("%zu values differ", bit_mismatches(grad, dtable_ref)));
}

// ---- cross entropy ------------------------------------------------------------------------------

template <typename T>
void check_cross_entropy(Context& ctx, int64_t rows, int64_t vocab, bool write_gradient) {
  const std::string shape = format("%s %lldx%lld%s", type_name<T>(), static_cast<long long>(rows),
                                   static_cast<long long>(vocab), write_gradient ? " grad" : "");
  const size_t n = static_cast<size_t>(rows * vocab);
  const auto logits = inputs<T>(ctx, n, 3.0f);
  auto targets = random_ids(ctx, static_cast<size_t>(rows), 0, static_cast<int32_t>(vocab));
  // About one row in eight ignored (never the first, so something is counted).
  std::bernoulli_distribution ignore(0.125);
  for (size_t r = 1; r < targets.size(); ++r)
    if (ignore(ctx.rng)) targets[r] = -100;
  int64_t counted = 0;
  for (const int32_t t : targets) counted += t >= 0 ? 1 : 0;
  const float grad_scale = 1.0f / static_cast<float>(counted);

  auto ref = logits;
  const cpu::CrossEntropyResult expected =
      cpu::softmax_cross_entropy<float>(ref.data(), targets.data(), rows, vocab, write_gradient,
                                        grad_scale);

  auto dlogits = upload<T>(logits);
  DeviceBuffer<int32_t> dtargets(targets);
  const dc::CrossEntropyResult got = dc::softmax_cross_entropy<T>(
      dlogits.get(), dtargets.get(), rows, vocab, write_gradient, grad_scale, ctx.stream);
  ctx.sync("softmax_cross_entropy");
  ctx.compare("cross_entropy loss " + shape, std::vector<double>{got.loss_sum},
              std::vector<double>{expected.loss_sum}, kIsBf16<T> ? 1e-5 : 1e-6);
  ctx.expect("cross_entropy count " + shape, got.count == expected.count,
             format("%lld vs %lld", static_cast<long long>(got.count),
                    static_cast<long long>(expected.count)));
  const auto after = download(dlogits);
  if (write_gradient)
    ctx.compare("cross_entropy gradient " + shape, to_double(after), to_double(representable<T>(ref)),
                tolerance<T>());
  else
    ctx.expect("cross_entropy leaves logits " + shape, bits_equal(after, logits));
}

// ---- AdamW, norm, clipping ----------------------------------------------------------------------

void check_adamw(Context& ctx, int64_t n, bool with_update, bool misaligned) {
  const std::string shape = format("n=%lld%s%s", static_cast<long long>(n),
                                   with_update ? " update-mask" : "", misaligned ? " misaligned" : "");
  const size_t shift = misaligned ? 1 : 0;
  const size_t count = static_cast<size_t>(n) + shift;
  auto params = ctx.normal(count, 0.05f);
  auto m = ctx.normal(count, 0.01f);
  auto v = ctx.normal(count, 1e-3f);
  for (float& x : v) x = x * x;  // second moments are non-negative
  std::vector<uint8_t> decay(count), update(count);
  std::bernoulli_distribution coin(0.5), trained(0.9);
  for (size_t i = 0; i < count; ++i) {
    decay[i] = coin(ctx.rng) ? 1 : 0;
    update[i] = trained(ctx.rng) ? 1 : 0;
  }
  DeviceBuffer<float> dp(params), dm(m), dv(v);
  DeviceBuffer<uint8_t> ddecay(decay), dupdate(update);
  const AdamWConfig config;  // Pythia's: β = (0.9, 0.95), eps 1e-8, weight decay 0.1
  dc::AdamWParams device_config;
  device_config.beta1 = config.beta1;
  device_config.beta2 = config.beta2;
  device_config.eps = config.eps;
  device_config.weight_decay = config.weight_decay;
  // Three steps with fresh gradients (the first with bias corrections near 0).
  for (int64_t step = 1; step <= 3; ++step) {
    const double lr = 6e-4 * static_cast<double>(step) / 3.0;
    const auto grads = ctx.normal(count, 0.1f);
    DeviceBuffer<float> dg(grads);
    dj::adamw_step(params.data() + shift, m.data() + shift, v.data() + shift, grads.data() + shift,
                   decay.data() + shift, with_update ? update.data() + shift : nullptr, n, step, lr,
                   config);
    dc::adamw_step(dp.get() + shift, dm.get() + shift, dv.get() + shift, dg.get() + shift,
                   ddecay.get() + shift, with_update ? dupdate.get() + shift : nullptr, n, step, lr,
                   device_config, ctx.stream);
    ctx.sync("adamw_step");
  }
  const auto gp = dp.download(), gm = dm.download(), gv = dv.download();
  ctx.compare("adamw params " + shape, to_double(gp), to_double(params), 1e-7);
  ctx.expect("adamw bit-identical " + shape,
             bits_equal(gp, params) && bits_equal(gm, m) && bits_equal(gv, v),
             format("p %zu, m %zu, v %zu values differ", bit_mismatches(gp, params),
                    bit_mismatches(gm, m), bit_mismatches(gv, v)));
}

void check_norm_and_clip(Context& ctx, int64_t n) {
  const std::string shape = format("n=%lld", static_cast<long long>(n));
  auto grads = ctx.normal(static_cast<size_t>(n), 0.3f);
  DeviceBuffer<float> dg(grads);
  const double expected = dj::sum_of_squares(grads.data(), n);
  const double got = dc::sum_of_squares(dg.get(), n, ctx.stream);
  ctx.compare("sum_of_squares " + shape, std::vector<double>{got}, std::vector<double>{expected},
              1e-12);
  const double norm = dj::global_norm(grads.data(), n);
  for (const double ratio : {0.5, 2.0}) {  // clipping, then a max_norm above the norm (no-op)
    const double max_norm = ratio * norm;
    const double factor_ref = dj::clip_by_global_norm(grads.data(), n, norm, max_norm);
    const double factor = dc::clip_by_global_norm(dg.get(), n, norm, max_norm, ctx.stream);
    ctx.sync("clip_by_global_norm");
    const auto clipped = dg.download();
    ctx.expect(format("clip_by_global_norm %s max=%.1fx", shape.c_str(), ratio),
               factor == factor_ref && bits_equal(clipped, grads),
               format("factor %.9g vs %.9g, %zu values differ", factor, factor_ref,
                      bit_mismatches(clipped, grads)));
  }
}

void check_conversions(Context& ctx, int64_t n) {
  auto values = ctx.normal(static_cast<size_t>(n));
  std::uniform_int_distribution<int> exponent(-140, 127);
  for (auto& v : values) v = std::ldexp(v, exponent(ctx.rng) / 4);
  // Special values and ties (1 + 2^-8 lies halfway between two bf16 values; 1 + 3 * 2^-8 too).
  const float specials[] = {0.0f,
                            -0.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            std::numeric_limits<float>::denorm_min(),
                            -1e-40f,
                            std::numeric_limits<float>::max(),
                            1.0f + 0x1p-8f,
                            1.0f + 3 * 0x1p-8f,
                            -(1.0f + 0x1p-8f),
                            0x1.fffffep127f};
  for (size_t i = 0; i < std::size(specials) && i < values.size(); ++i) values[i] = specials[i];
  DeviceBuffer<float> src(values);
  DeviceBuffer<bf16> half(values.size());
  DeviceBuffer<float> back(values.size());
  ctx.poison(half);
  ctx.poison(back);
  dc::convert(half.get(), src.get(), n, ctx.stream);
  dc::convert(back.get(), half.get(), n, ctx.stream);
  ctx.sync("convert");
  const auto got_half = half.download();
  const auto got_back = back.download();
  size_t bad_down = 0, bad_up = 0;
  for (size_t i = 0; i < values.size(); ++i) {
    const bf16 expected = __float2bfloat16_rn(values[i]);
    uint16_t a = 0, e = 0;
    std::memcpy(&a, &got_half[i], 2);
    std::memcpy(&e, &expected, 2);
    const bool nan = std::isnan(values[i]);
    if (nan ? !std::isnan(__bfloat162float(got_half[i])) : a != e) ++bad_down;
    const float up = __bfloat162float(got_half[i]);
    if (std::isnan(up) ? !std::isnan(got_back[i]) : std::memcmp(&up, &got_back[i], 4) != 0) ++bad_up;
  }
  ctx.expect(format("convert f32->bf16 n=%lld (round to nearest even)", static_cast<long long>(n)),
             bad_down == 0, format("%zu values differ", bad_down));
  ctx.expect(format("convert bf16->f32 n=%lld (exact)", static_cast<long long>(n)), bad_up == 0,
             format("%zu values differ", bad_up));
}

}  // namespace

// ---- checks -------------------------------------------------------------------------------------

DJ_GPU_CHECK(ops_gemm) {
  dc::Blas blas;
  check_gemm_all<float, float>(ctx, blas);
  check_gemm_all<bf16, float>(ctx, blas);
  check_gemm_all<bf16, bf16>(ctx, blas);
  // Informational: products cuBLASLt declined run on the plain fallback kernel (still checked above).
  ctx.expect("gemm fallback products", true,
             format("%lld of the products above used the fallback kernel",
                    static_cast<long long>(blas.fallback_products())));
}

DJ_GPU_CHECK(ops_linear) {
  dc::Blas blas;
  const int64_t shapes[][3] = {{1, 64, 48}, {37, 96, 130}, {128, 256, 384}};
  for (const auto& s : shapes) {
    check_linear<float>(ctx, blas, s[0], s[1], s[2]);
    check_linear<bf16>(ctx, blas, s[0], s[1], s[2]);
  }
  ctx.expect("linear fallback products", true,
             format("%lld products used the fallback kernel",
                    static_cast<long long>(blas.fallback_products())));
}

DJ_GPU_CHECK(ops_layernorm) {
  const int64_t shapes[][2] = {{1, 64}, {5, 33}, {37, 1000}, {300, 96}, {256, 1024}, {3, 4100}};
  for (const auto& s : shapes) {
    check_layernorm<float>(ctx, s[0], s[1]);
    check_layernorm<bf16>(ctx, s[0], s[1]);
  }
}

DJ_GPU_CHECK(ops_gelu) {
  for (const auto kind : {dc::GeluKind::Erf, dc::GeluKind::Tanh}) {
    for (const int64_t n : {int64_t(1), int64_t(4096), kEmulated ? int64_t(100003) : int64_t(1000003)}) {
      check_gelu<float>(ctx, n, kind, false);
      check_gelu<bf16>(ctx, n, kind, false);
    }
    check_gelu<float>(ctx, 1001, kind, true);
    check_gelu<bf16>(ctx, 1001, kind, true);
  }
}

DJ_GPU_CHECK(ops_rotary) {
  const int64_t shapes[][5] = {{6, 37, 64, 16, 0}, {4, 33, 128, 32, 7}, {1, 1, 64, 32, 2047},
                               {3, 20, 64, 64, 100}};
  for (const auto& s : shapes) {
    check_rotary<float>(ctx, s[0], s[1], s[2], s[3], s[4]);
    check_rotary<bf16>(ctx, s[0], s[1], s[2], s[3], s[4]);
  }
}

DJ_GPU_CHECK(ops_embedding) {
  check_embedding<float>(ctx, 1, 10, 8, 10);
  check_embedding<float>(ctx, 517, 1000, 64, 40);
  check_embedding<bf16>(ctx, 517, 1000, 64, 40);
  check_embedding<float>(ctx, 300, 50304, 37, 50304);
  check_embedding<bf16>(ctx, 300, 50304, 37, 50304);
  check_embedding<float>(ctx, 2048, 50304, 128, 2000);
}

DJ_GPU_CHECK(ops_cross_entropy) {
  for (const bool grad : {true, false}) {
    check_cross_entropy<float>(ctx, 1, 50304, grad);
    check_cross_entropy<bf16>(ctx, 1, 50304, grad);
    check_cross_entropy<float>(ctx, 64, 50304, grad);
    check_cross_entropy<bf16>(ctx, 64, 50304, grad);
  }
  check_cross_entropy<float>(ctx, 33, 1001, true);
  check_cross_entropy<bf16>(ctx, 33, 1001, true);
  check_cross_entropy<float>(ctx, 16, 50257, true);
}

DJ_GPU_CHECK(ops_adamw) {
  check_adamw(ctx, kEmulated ? 100003 : 1000003, true, false);
  check_adamw(ctx, kEmulated ? 1 << 16 : 1 << 20, false, false);
  check_adamw(ctx, 4099, true, true);
  for (const int64_t n : {int64_t(1), int64_t(4095), int64_t(4097), kEmulated ? int64_t(1000003) : int64_t(10000019)})
    check_norm_and_clip(ctx, n);
}

DJ_GPU_CHECK(ops_convert) {
  check_conversions(ctx, kEmulated ? 100003 : 1000003);
  check_conversions(ctx, 12);
}

// ---- benchmarks ---------------------------------------------------------------------------------

namespace {

// Ceilings measured on an H200 of this workplace (KINDS.md): device-to-device copy 4.3 TB/s
// (read + write), 8192^3 bf16 matrix product 790 TFLOP/s on random data. Datasheet: 4.8 TB/s, 989.
constexpr double kBandwidth = 4.3e12;
constexpr double kBf16Flops = 790e12;

size_t sz(int64_t count) { return static_cast<size_t>(count); }

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

void bench_row(Context& ctx, const std::string& name, double ms, double flops, double bytes,
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

}  // namespace

DJ_GPU_BENCH(ops_gemm) {
  dc::Blas blas;
  {
    const int64_t n = 4096;
    DeviceBuffer<bf16> A(sz(n * n)), B(sz(n * n)), C(sz(n * n));
    fill_random(ctx, A);
    fill_random(ctx, B);
    const double ms = ctx.time_ms([&] {
      dc::gemm<bf16, bf16>(blas, false, false, n, n, n, 1.0f, A.get(), B.get(), 0.0f, C.get(),
                           ctx.stream);
    }, 20, 3);
    bench_row(ctx, "gemm bf16 4096^3 NN", ms, 2.0 * n * n * n, 3.0 * n * n * 2);
  }
  // The 410M model: 8192 tokens, hidden 1024 -> QKV 3072, MLP 4096 and back.
  const int64_t tokens = 8192;
  const int64_t shapes[][2] = {{1024, 3072}, {1024, 4096}, {4096, 1024}};
  for (const auto& s : shapes) {
    const int64_t in = s[0], out = s[1];
    DeviceBuffer<bf16> x(sz(tokens * in)), W(sz(out * in)), b(sz(out)),
        y(sz(tokens * out));
    fill_random(ctx, x);
    fill_random(ctx, W, 0.03f);
    fill_random(ctx, b);
    const double flops = 2.0 * tokens * in * out;
    const double bytes = 2.0 * (tokens * in + out * in + tokens * out);
    const double ms = ctx.time_ms([&] {
      dc::linear_forward<bf16>(blas, y.get(), x.get(), W.get(), b.get(), tokens, in, out, ctx.stream);
    }, 20, 3);
    bench_row(ctx, format("linear+bias bf16 %lldx%lld->%lld", static_cast<long long>(tokens),
                          static_cast<long long>(in), static_cast<long long>(out)),
              ms, flops, bytes);
    if (out == 4096) {
      DeviceBuffer<bf16> pre(sz(tokens * out));
      const double ms_gelu = ctx.time_ms([&] {
        dc::linear_forward_gelu_tanh<bf16>(blas, y.get(), pre.get(), x.get(), W.get(), b.get(),
                                           tokens, in, out, ctx.stream);
      }, 20, 3);
      bench_row(ctx, format("linear+bias+gelu_tanh(aux) bf16 %lldx%lld->%lld",
                            static_cast<long long>(tokens), static_cast<long long>(in),
                            static_cast<long long>(out)),
                ms_gelu, flops, bytes + 2.0 * tokens * out);
      // dW += dy^T x with fp32 accumulation (bf16 operands).
      DeviceBuffer<float> dW(sz(out * in));
      DJ_CUDA(cudaMemset(dW.get(), 0, dW.size() * sizeof(float)));
      const double ms_dw = ctx.time_ms([&] {
        dc::gemm<bf16, float>(blas, true, false, out, in, tokens, 1.0f, y.get(), x.get(), 1.0f,
                              dW.get(), ctx.stream);
      }, 20, 3);
      bench_row(ctx, "dW+= bf16->f32 4096x1024 (K=8192)", ms_dw, flops,
                2.0 * (tokens * in + tokens * out) + 8.0 * out * in);
    }
  }
}

DJ_GPU_BENCH(ops_cross_entropy) {
  const int64_t rows = 8192, vocab = 50304;
  auto targets = random_ids(ctx, sz(rows), 0, int32_t(vocab));
  DeviceBuffer<int32_t> dtargets(targets);
  DeviceBuffer<double> row_loss(sz(rows));
  DeviceBuffer<dc::CrossEntropyTotals> totals(1);
  {
    DeviceBuffer<bf16> logits(sz(rows * vocab));
    fill_random(ctx, logits, 3.0f);
    const double bytes = 2.0 * 2.0 * rows * vocab;  // read + write every logit once
    const double ms = ctx.time_ms([&] {
      dc::softmax_cross_entropy_async<bf16>(logits.get(), dtargets.get(), rows, vocab, true,
                                            1.0f / rows, row_loss.get(), totals.get(), ctx.stream);
    }, 10, 2);
    bench_row(ctx, "cross_entropy+grad bf16 8192x50304", ms, 0.0, bytes, "in place");
    const double ms_loss = ctx.time_ms([&] {
      dc::softmax_cross_entropy_async<bf16>(logits.get(), dtargets.get(), rows, vocab, false,
                                            1.0f / rows, row_loss.get(), totals.get(), ctx.stream);
    }, 10, 2);
    bench_row(ctx, "cross_entropy loss only bf16 8192x50304", ms_loss, 0.0, 2.0 * rows * vocab);
  }
  {
    DeviceBuffer<float> logits(sz(rows * vocab));
    fill_random(ctx, logits, 3.0f);
    const double ms = ctx.time_ms([&] {
      dc::softmax_cross_entropy_async<float>(logits.get(), dtargets.get(), rows, vocab, true,
                                             1.0f / rows, row_loss.get(), totals.get(), ctx.stream);
    }, 10, 2);
    bench_row(ctx, "cross_entropy+grad f32 8192x50304", ms, 0.0, 2.0 * 4.0 * rows * vocab,
              "in place");
  }
}

DJ_GPU_BENCH(ops_layernorm) {
  const int64_t rows = 8192, channels = 1024;
  const size_t n = sz(rows * channels);
  DeviceBuffer<float> mean(sz(rows)), rstd(sz(rows)), dw(sz(channels)),
      db(sz(channels));
  DJ_CUDA(cudaMemset(dw.get(), 0, dw.size() * sizeof(float)));
  DJ_CUDA(cudaMemset(db.get(), 0, db.size() * sizeof(float)));
  auto run = [&](auto tag) {
    using T = decltype(tag);
    DeviceBuffer<T> x(n), y(n), dy(n), dx(n), w(sz(channels)), b(sz(channels));
    fill_random(ctx, x);
    fill_random(ctx, dy);
    fill_random(ctx, dx);
    fill_random(ctx, w);
    fill_random(ctx, b);
    const double ms = ctx.time_ms([&] {
      dc::layernorm_forward<T>(y.get(), mean.get(), rstd.get(), x.get(), w.get(), b.get(), rows,
                               channels, 1e-5, ctx.stream);
    }, 20, 3);
    bench_row(ctx, format("layernorm_forward %s 8192x1024", type_name<T>()), ms, 0.0,
              2.0 * n * sizeof(T) + 8.0 * rows);
    const double ms_back = ctx.time_ms([&] {
      dc::layernorm_backward<T>(dx.get(), dw.get(), db.get(), dy.get(), x.get(), w.get(),
                                mean.get(), rstd.get(), rows, channels, ctx.stream);
    }, 20, 3);
    // Floor: read dy, x, dx and write dx once; this version reads dy and x twice (dx, then dw/db).
    bench_row(ctx, format("layernorm_backward %s 8192x1024", type_name<T>()), ms_back, 0.0,
              4.0 * n * sizeof(T) + 8.0 * rows, "dy, x read twice");
  };
  run(bf16{});
  run(float{});
}

DJ_GPU_BENCH(ops_adamw) {
  const int64_t n = 100'000'000;
  DeviceBuffer<float> p(sz(n)), m(sz(n)), v(sz(n)), g(sz(n));
  DeviceBuffer<uint8_t> decay(sz(n));
  fill_random(ctx, p, 0.05f);
  fill_random(ctx, m, 0.01f);
  fill_random(ctx, g, 0.1f);
  DJ_CUDA(cudaMemset(v.get(), 0, v.size() * sizeof(float)));
  DJ_CUDA(cudaMemset(decay.get(), 1, decay.size()));
  dc::AdamWParams config;
  int64_t step = 0;
  const double ms = ctx.time_ms([&] {
    ++step;
    dc::adamw_step(p.get(), m.get(), v.get(), g.get(), decay.get(), nullptr, n, step, 6e-4, config,
                   ctx.stream);
  }, 10, 2);
  bench_row(ctx, "adamw_step 1e8 params", ms, 0.0, 29.0 * n);
  DeviceBuffer<double> result(1);
  const double ms_norm = ctx.time_ms([&] {
    dc::sum_of_squares_async(g.get(), n, result.get(), ctx.stream);
  }, 10, 2);
  bench_row(ctx, "sum_of_squares 1e8", ms_norm, 0.0, 4.0 * n);
}

}  // namespace dj::gpucheck
