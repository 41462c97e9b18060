// Device checks of the DiJiang attention kernels (kernels/cuda/dijiang_attention.h) against the
// CPU references (kernels/cpu/dijiang.h, kernels/cpu/attention.h), and the benchmark table of
// DiJiang attention against the softmax-attention kernel.
//
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

namespace {

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
std::vector<double> download_f32(const DeviceBuffer<float>& b) {
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
DeviceBuffer<float> output_f32(Context& ctx, size_t count) {
  DeviceBuffer<float> b(count);
  ctx.poison(b);
  return b;
}

std::vector<double> to_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }
std::vector<float> to_float(const std::vector<double>& v) {
  std::vector<float> f(v.size());
  for (size_t i = 0; i < v.size(); ++i) f[i] = static_cast<float>(v[i]);
  return f;
}

template <typename T>
double threshold() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-2;
}

// log γ_h of the reference schedule: γ_h = 1 − exp(ℓ_h), ℓ = linspace(log(1/32), log(1/512), H).
std::vector<float> reference_log_gamma(int64_t H) {
  std::vector<float> lg(static_cast<size_t>(H));
  const double a = std::log(1.0 / 32), b = std::log(1.0 / 512);
  for (int64_t h = 0; h < H; ++h) {
    const double l = H == 1 ? a : a + (b - a) * static_cast<double>(h) / static_cast<double>(H - 1);
    lg[static_cast<size_t>(h)] = static_cast<float>(std::log1p(-std::exp(l)));
  }
  return lg;
}

// Positive features of sum ~1 per row (what the feature map produces).
std::vector<float> features(Context& ctx, size_t rows, int64_t m) {
  return ctx.uniform(rows * static_cast<size_t>(m), 0.f, 2.f / static_cast<float>(m));
}

// P = C diag(t), t ~ N(0, 1), as fp32.
std::vector<float> projection(Context& ctx, int64_t d) {
  const std::vector<float> tf = ctx.normal(static_cast<size_t>(d));
  const std::vector<double> t(tf.begin(), tf.end());
  std::vector<double> P(static_cast<size_t>(d * d));
  dj::cpu::dct_projection<double>(P.data(), t.data(), d);
  return to_float(P);
}

std::string shape_name(const char* what, const char* type, const std::string& dims) {
  return std::string(what) + " " + type + " " + dims;
}

// ---- feature map and feature weights ---------------------------------------------------------------

template <typename T>
void check_feature_map(Context& ctx, int64_t rows, int64_t d) {
  const std::string dims = "rows=" + std::to_string(rows) + " d=" + std::to_string(d);
  const std::vector<float> P = projection(ctx, d);
  DeviceBuffer<float> P_dev(P);
  const size_t count = static_cast<size_t>(rows * d);

  // Forward.
  const std::vector<float> x = representable<T>(ctx.normal(count));
  auto x_dev = upload<T>(x);
  auto s_dev = output<T>(ctx, count);
  dj::cuda::feature_map_forward<T>(dptr<T>(s_dev), dptr<T>(x_dev), P_dev.get(), rows, d, ctx.stream);
  ctx.sync("feature_map_forward");
  std::vector<double> s_ref(count);
  dj::cpu::feature_map_forward<double>(s_ref.data(), to_double(x).data(), to_double(P).data(), rows, d);
  ctx.compare(shape_name("feature_map fwd", type_name<T>(), dims), download<T>(s_dev), s_ref, threshold<T>());

  // Backward, on softmax rows s and random ds.
  const std::vector<float> s = representable<T>(to_float(s_ref));
  const std::vector<float> ds = representable<T>(ctx.normal(count));
  auto s_in = upload<T>(s);
  auto ds_dev = upload<T>(ds);
  auto dx_dev = output<T>(ctx, count);
  dj::cuda::feature_map_backward<T>(dptr<T>(dx_dev), dptr<T>(ds_dev), dptr<T>(s_in), P_dev.get(), rows, d,
                                    ctx.stream);
  ctx.sync("feature_map_backward");
  std::vector<double> dx_ref(count);
  dj::cpu::feature_map_backward<double>(dx_ref.data(), to_double(ds).data(), to_double(s).data(),
                                        to_double(P).data(), rows, d);
  ctx.compare(shape_name("feature_map bwd", type_name<T>(), dims), download<T>(dx_dev), dx_ref, threshold<T>());
}

template <typename T>
void check_feature_weights(Context& ctx, int64_t BH, int64_t H, int64_t n, int64_t d) {
  const std::string dims = "BH=" + std::to_string(BH) + " H=" + std::to_string(H) + " n=" + std::to_string(n) +
                           " d=" + std::to_string(d);
  const size_t count = static_cast<size_t>(BH * n * d);
  const std::vector<float> s = representable<T>(features(ctx, static_cast<size_t>(BH * n), d));
  const std::vector<float> w = ctx.uniform(static_cast<size_t>(H * d), 0.5f, 1.5f);
  auto s_dev = upload<T>(s);
  DeviceBuffer<float> w_dev(w);

  auto phi_dev = output<T>(ctx, count);
  dj::cuda::feature_weights_forward<T>(dptr<T>(phi_dev), dptr<T>(s_dev), w_dev.get(), BH, H, n, d, ctx.stream);
  ctx.sync("feature_weights_forward");
  std::vector<double> phi_ref(count);
  dj::cpu::feature_weights_forward<double>(phi_ref.data(), to_double(s).data(), to_double(w).data(), BH, H, n, d);
  ctx.compare(shape_name("feature_weights fwd", type_name<T>(), dims), download<T>(phi_dev), phi_ref,
              threshold<T>());

  // Backward in place (ds aliases dphi), dw accumulating onto random values.
  const std::vector<float> dphi = representable<T>(ctx.normal(count));
  const std::vector<float> dw0 = ctx.normal(static_cast<size_t>(H * d));
  auto g_dev = upload<T>(dphi);
  DeviceBuffer<float> dw_dev(dw0);
  dj::cuda::feature_weights_backward<T>(dptr<T>(g_dev), dw_dev.get(), dptr<T>(g_dev), dptr<T>(s_dev), w_dev.get(),
                                        BH, H, n, d, ctx.stream);
  ctx.sync("feature_weights_backward");
  std::vector<double> ds_ref(count), dw_ref = to_double(dw0);
  dj::cpu::feature_weights_backward<double>(ds_ref.data(), dw_ref.data(), to_double(dphi).data(),
                                            to_double(s).data(), to_double(w).data(), BH, H, n, d);
  ctx.compare(shape_name("feature_weights bwd ds (in place)", type_name<T>(), dims), download<T>(g_dev), ds_ref,
              threshold<T>());
  ctx.compare(shape_name("feature_weights bwd dw (+=)", type_name<T>(), dims), download_f32(dw_dev), dw_ref,
              threshold<T>());
}

DJ_GPU_CHECK(dijiang_feature_map) {
  const int64_t shapes[][2] = {{1, 64}, {37, 64}, {1000, 128}, {300, 80}, {45, 20}};
  for (const auto& s : shapes) {
    check_feature_map<float>(ctx, s[0], s[1]);
    check_feature_map<bf16>(ctx, s[0], s[1]);
  }
}

DJ_GPU_CHECK(dijiang_feature_weights) {
  const int64_t shapes[][4] = {{6, 3, 33, 64}, {2, 1, 1, 128}, {5, 2, 17, 20}};
  for (const auto& s : shapes) {
    check_feature_weights<float>(ctx, s[0], s[1], s[2], s[3]);
    check_feature_weights<bf16>(ctx, s[0], s[1], s[2], s[3]);
  }
}

// Pythia's other head sizes: 32, 80 and 256, where P no longer fits in shared memory and streams
// through it in slabs (one row, rows < a 128-row block, several blocks and a ragged last one, d not
// a multiple of the 32-row slab, and d without the 16-byte path).
DJ_GPU_CHECK(dijiang_feature_map_heads) {
  std::vector<std::array<int64_t, 2>> shapes = {{1, 256},  {37, 256}, {300, 256}, {129, 200},
                                                {40, 130}, {33, 32},  {50, 80}};
  if (!kEmulated) {  // on a GPU also training sizes: B = 4, H = 8 (16) and L = 1025 rows
    shapes.push_back({4 * 8 * 1025, 256});
    shapes.push_back({4 * 16 * 1025, 80});
  }
  for (const auto& s : shapes) {
    check_feature_map<float>(ctx, s[0], s[1]);
    check_feature_map<bf16>(ctx, s[0], s[1]);
  }
  const int64_t weight_shapes[][4] = {{4, 2, 9, 256}, {2, 1, 7, 200}, {3, 3, 5, 32}, {2, 2, 6, 80}};
  for (const auto& s : weight_shapes) {
    check_feature_weights<float>(ctx, s[0], s[1], s[2], s[3]);
    check_feature_weights<bf16>(ctx, s[0], s[1], s[2], s[3]);
  }
}

// ---- decay attention -------------------------------------------------------------------------------

struct DecayShape {
  int64_t BH, H, n, m, dv, chunk;
  std::string name() const {
    return "BH=" + std::to_string(BH) + " H=" + std::to_string(H) + " n=" + std::to_string(n) +
           " m=" + std::to_string(m) + " dv=" + std::to_string(dv) + " chunk=" + std::to_string(chunk);
  }
};

// The scale of the log-gamma gradient of each head as a sum of terms of random signs:
//   scale_h = sqrt( Σ_{bh of head h} Σ_{j<i} τ_ij² ),   τ_ij = (i − j) γ^(i−j) ⟨fq_i, fk_j⟩ ⟨dO_i, v_j⟩
// (docs/method.md section 4: dlog γ = Σ_{j<=i} (i − j) A_ij (dO Vᵀ)_ij). With random dO and v the
// terms have random signs, so the gradient is typically of this size, but for some inputs they
// cancel to a far smaller value: its relative error then has no bound (bf16 reached 4.6e-2 for
// some seeds). The kernels' rounding errors (the bf16 copies of the states S and R, the decayed
// keys) are sums of the same kind, so they are a small fraction of scale_h whatever the
// cancellation, while a wrong or missing group of terms moves the result by a sizeable fraction of
// it. Errors are measured against scale_h.
std::vector<double> dlog_scale(const std::vector<float>& fq, const std::vector<float>& fk,
                               const std::vector<float>& dout, const std::vector<float>& v,
                               const std::vector<float>& lg, const DecayShape& sh) {
  const auto [BH, H, n, m, dv, chunk] = sh;
  std::vector<double> sq(static_cast<size_t>(H), 0.0);
  for (int64_t bh = 0; bh < BH; ++bh) {
    const double log_gamma = lg[static_cast<size_t>(bh % H)];
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < i; ++j) {
        double a = 0.0, g = 0.0;
        for (int64_t c = 0; c < m; ++c)
          a += static_cast<double>(fq[static_cast<size_t>((bh * n + i) * m + c)]) *
               fk[static_cast<size_t>((bh * n + j) * m + c)];
        for (int64_t c = 0; c < dv; ++c)
          g += static_cast<double>(dout[static_cast<size_t>((bh * n + i) * dv + c)]) *
               v[static_cast<size_t>((bh * n + j) * dv + c)];
        const double e = static_cast<double>(i - j);
        const double term = e * std::exp(e * log_gamma) * a * g;
        sq[static_cast<size_t>(bh % H)] += term * term;
      }
  }
  for (double& x : sq) x = std::sqrt(x);
  return sq;
}

// Records ‖got − expected‖₂ / ‖scale‖₂ through ctx.compare (scale: the typical size of each value,
// see dlog_scale), and names the worst value in the note.
void compare_to_scale(Context& ctx, const std::string& name, const std::vector<double>& got,
                      const std::vector<double>& expected, const std::vector<double>& scale,
                      double threshold) {
  std::vector<double> shifted(got.size());
  size_t worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    shifted[i] = scale[i] + (got[i] - expected[i]);
    if (std::fabs(got[i] - expected[i]) > std::fabs(got[worst] - expected[worst])) worst = i;
  }
  char note[160] = "";
  if (!got.empty())
    std::snprintf(note, sizeof note, "worst [%zu]: got %.9g, expected %.9g, scale %.3g", worst, got[worst],
                  expected[worst], scale[worst]);
  ctx.compare(name, shifted, scale, threshold, note);
}

template <typename T>
void check_decay(Context& ctx, const DecayShape& sh, bool with_dlog) {
  const auto [BH, H, n, m, dv, chunk] = sh;
  const std::string dims = sh.name();
  const size_t qk = static_cast<size_t>(BH * n * m), vo = static_cast<size_t>(BH * n * dv);
  const std::vector<float> fq = representable<T>(features(ctx, static_cast<size_t>(BH * n), m));
  const std::vector<float> fk = representable<T>(features(ctx, static_cast<size_t>(BH * n), m));
  const std::vector<float> v = representable<T>(ctx.normal(vo));
  const std::vector<float> lg = reference_log_gamma(H);
  auto fq_dev = upload<T>(fq);
  auto fk_dev = upload<T>(fk);
  auto v_dev = upload<T>(v);
  DeviceBuffer<float> lg_dev(lg);
  const std::vector<double> fq_d = to_double(fq), fk_d = to_double(fk), v_d = to_double(v), lg_d = to_double(lg);

  // Forward.
  auto o_dev = output<T>(ctx, vo);
  dj::cuda::decay_attention_forward<T>(dptr<T>(o_dev), dptr<T>(fq_dev), dptr<T>(fk_dev), dptr<T>(v_dev),
                                       lg_dev.get(), BH, H, n, m, dv, chunk, ctx.stream);
  ctx.sync("decay_attention_forward");
  std::vector<double> o_ref(vo);
  dj::cpu::decay_attention_forward<double>(o_ref.data(), fq_d.data(), fk_d.data(), v_d.data(), lg_d.data(), BH, H,
                                           n, m, dv, dj::cpu::DecayForm::Chunkwise, 64);
  if (with_dlog)
    ctx.compare(shape_name("decay fwd", type_name<T>(), dims), download<T>(o_dev), o_ref, threshold<T>());

  // Backward.
  const std::vector<float> dout = representable<T>(ctx.normal(vo));
  const std::vector<float> dlog0 = ctx.normal(static_cast<size_t>(H));
  auto dout_dev = upload<T>(dout);
  auto dfq_dev = output<T>(ctx, qk);
  auto dfk_dev = output<T>(ctx, qk);
  auto dv_dev = output<T>(ctx, vo);
  DeviceBuffer<float> dlog_dev(dlog0);
  dj::cuda::decay_attention_backward<T>(dptr<T>(dfq_dev), dptr<T>(dfk_dev), dptr<T>(dv_dev),
                                        with_dlog ? dlog_dev.get() : nullptr, dptr<T>(dout_dev), dptr<T>(fq_dev),
                                        dptr<T>(fk_dev), dptr<T>(v_dev), lg_dev.get(), BH, H, n, m, dv, chunk,
                                        ctx.stream);
  ctx.sync("decay_attention_backward");
  std::vector<double> dfq_ref(qk), dfk_ref(qk), dv_ref(vo), dlog_ref = to_double(dlog0);
  dj::cpu::decay_attention_backward<double>(dfq_ref.data(), dfk_ref.data(), dv_ref.data(), dlog_ref.data(),
                                            to_double(dout).data(), fq_d.data(), fk_d.data(), v_d.data(),
                                            lg_d.data(), BH, H, n, m, dv, dj::cpu::DecayForm::Chunkwise, 64);
  const std::string tag = with_dlog ? "decay bwd" : "decay bwd (no dlog)";
  ctx.compare(shape_name((tag + " dfq").c_str(), type_name<T>(), dims), download<T>(dfq_dev), dfq_ref,
              threshold<T>());
  ctx.compare(shape_name((tag + " dfk").c_str(), type_name<T>(), dims), download<T>(dfk_dev), dfk_ref,
              threshold<T>());
  ctx.compare(shape_name((tag + " dv").c_str(), type_name<T>(), dims), download<T>(dv_dev), dv_ref,
              threshold<T>());
  if (with_dlog) {
    // dlog γ accumulates onto random values; compare the added gradient itself (the random
    // starting values would otherwise dominate the relative error).
    const std::vector<double> got = download_f32(dlog_dev);
    std::vector<double> added(got.size()), expected(got.size());
    for (size_t h = 0; h < got.size(); ++h) {
      added[h] = got[h] - static_cast<double>(dlog0[h]);
      expected[h] = dlog_ref[h] - static_cast<double>(dlog0[h]);
    }
    if (n > 1) {
      compare_to_scale(ctx, shape_name("decay bwd dlog_gamma (+=, vs scale)", type_name<T>(), dims), added, expected,
                       dlog_scale(fq, fk, dout, v, lg, sh), threshold<T>());
    } else {  // one position: every decay exponent is 0, so the gradient is exactly 0
      ctx.expect(shape_name("decay bwd dlog_gamma (+=) unchanged (n = 1)", type_name<T>(), dims),
                 std::all_of(added.begin(), added.end(), [](double x) { return std::fabs(x) < 1e-6; }));
    }
  } else {
    ctx.expect(shape_name("decay bwd (no dlog) leaves dlog_gamma", type_name<T>(), dims),
               download_f32(dlog_dev) == to_double(dlog0));
  }
}

const DecayShape kDecayShapes[] = {
    {6, 3, 1, 64, 64, 64},      // n = 1
    {3, 1, 37, 64, 64, 64},     // n < chunk, H = 1
    {4, 2, 129, 128, 128, 64},  // n = 2 chunk + 1, m = dv = 128
    {2, 2, 191, 128, 64, 64},   // n = 3 chunk − 1
    {2, 1, 200, 48, 80, 32},    // padded m, two dv slices, chunk 32
    {3, 3, 50, 20, 24, 16},     // widths without the 16-byte path, chunk 16
    {2, 2, 300, 64, 128, 128},  // chunk 128
};

DJ_GPU_CHECK(dijiang_decay_attention) {
  for (const DecayShape& sh : kDecayShapes) {
    check_decay<float>(ctx, sh, true);
    check_decay<bf16>(ctx, sh, true);
  }
  check_decay<float>(ctx, kDecayShapes[2], false);
  check_decay<bf16>(ctx, kDecayShapes[3], false);
}

// Pythia's other head sizes (m = dv = d): 32 (14m, 31m), 80 (2.8b) and 256 (1b). Above 128 the
// forward holds all m features in one block (chunk 32 or 16: the kernel shrinks it to fit) and the
// backward takes two passes over 128-wide column blocks, summing fp32 partials; the shapes cover
// each role alone in its second pass (m or dv above 128 alone), ragged blocks and the path
// without 16-byte copies.
const DecayShape kDecayHeadShapes[] = {
    {4, 2, 1, 256, 256, 64},    // n = 1
    {2, 2, 20, 256, 256, 64},   // n < chunk
    {2, 1, 97, 256, 256, 32},   // n = 3 chunk + 1, 4 slices of 64 each way
    {2, 2, 63, 32, 32, 32},     // d = 32, n = 2 chunk − 1
    {3, 3, 65, 80, 80, 64},     // d = 80, n = chunk + 1, two slices of 64 (one of 16)
    {2, 2, 70, 256, 80, 32},    // m = 256 only: the dv role takes two passes
    {2, 1, 50, 80, 256, 16},    // dv = 256 only: the dq and dk roles take two passes
    {2, 2, 45, 200, 136, 16},   // ragged blocks: m = 128 + 72, dv = 128 + 8
    {1, 1, 33, 130, 250, 32},   // widths not multiples of 8: no 16-byte path
};
// On a GPU also the sizes of training (the emulation would take minutes): Pythia-1b's H = 8, and
// sequences of many chunks.
const DecayShape kDecayHeadShapesGpu[] = {
    {8, 8, 1025, 256, 256, 64},
    {4, 4, 513, 80, 80, 64},
    {8, 8, 257, 32, 32, 64},
};

DJ_GPU_CHECK(dijiang_decay_attention_heads) {
  for (const DecayShape& sh : kDecayHeadShapes) {
    check_decay<float>(ctx, sh, true);
    check_decay<bf16>(ctx, sh, true);
  }
  if (!kEmulated)
    for (const DecayShape& sh : kDecayHeadShapesGpu) {
      check_decay<float>(ctx, sh, true);
      check_decay<bf16>(ctx, sh, true);
    }
  check_decay<float>(ctx, kDecayHeadShapes[2], false);
  check_decay<bf16>(ctx, kDecayHeadShapes[7], false);
}

// Prefill n − 1 tokens, one decoding step with token n − 1: the step's output must equal the
// chunkwise forward's last output, and the state must equal the prefill state of all n tokens.
template <typename T>
void check_decode(Context& ctx, int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv) {
  const std::string dims = "BH=" + std::to_string(BH) + " H=" + std::to_string(H) + " n=" + std::to_string(n) +
                           " m=" + std::to_string(m) + " dv=" + std::to_string(dv);
  const std::vector<float> fq = representable<T>(features(ctx, static_cast<size_t>(BH * n), m));
  const std::vector<float> fk = representable<T>(features(ctx, static_cast<size_t>(BH * n), m));
  const std::vector<float> v = representable<T>(ctx.normal(static_cast<size_t>(BH * n * dv)));
  const std::vector<float> lg = reference_log_gamma(H);
  DeviceBuffer<float> lg_dev(lg);

  // The prefix (n − 1 tokens per row) and the last token, as separate tensors.
  std::vector<float> fk_prefix, v_prefix, fq_last, fk_last, v_last;
  for (int64_t bh = 0; bh < BH; ++bh) {
    for (int64_t i = 0; i < n; ++i) {
      const auto qk_at = fq.begin() + (bh * n + i) * m;
      const auto kk_at = fk.begin() + (bh * n + i) * m;
      const auto v_at = v.begin() + (bh * n + i) * dv;
      if (i + 1 < n) {
        fk_prefix.insert(fk_prefix.end(), kk_at, kk_at + m);
        v_prefix.insert(v_prefix.end(), v_at, v_at + dv);
      } else {
        fq_last.insert(fq_last.end(), qk_at, qk_at + m);
        fk_last.insert(fk_last.end(), kk_at, kk_at + m);
        v_last.insert(v_last.end(), v_at, v_at + dv);
      }
    }
  }
  auto fk_prefix_dev = upload<T>(fk_prefix);
  auto v_prefix_dev = upload<T>(v_prefix);
  auto fq_last_dev = upload<T>(fq_last);
  auto fk_last_dev = upload<T>(fk_last);
  auto v_last_dev = upload<T>(v_last);
  auto state_dev = output_f32(ctx, static_cast<size_t>(BH * m * dv));
  auto o_dev = output<T>(ctx, static_cast<size_t>(BH * dv));
  dj::cuda::decay_attention_prefill_state<T>(state_dev.get(), dptr<T>(fk_prefix_dev), dptr<T>(v_prefix_dev),
                                             lg_dev.get(), BH, H, n - 1, m, dv, 64, ctx.stream);
  dj::cuda::decay_attention_step<T>(dptr<T>(o_dev), state_dev.get(), dptr<T>(fq_last_dev), dptr<T>(fk_last_dev),
                                    dptr<T>(v_last_dev), lg_dev.get(), BH, H, m, dv, ctx.stream);
  ctx.sync("decay prefill + step");

  std::vector<double> o_ref(static_cast<size_t>(BH * n * dv)), state_ref(static_cast<size_t>(BH * m * dv));
  dj::cpu::decay_attention_forward<double>(o_ref.data(), to_double(fq).data(), to_double(fk).data(),
                                           to_double(v).data(), to_double(lg).data(), BH, H, n, m, dv,
                                           dj::cpu::DecayForm::Chunkwise, 64);
  dj::cpu::decay_attention_prefill_state<double>(state_ref.data(), to_double(fk).data(), to_double(v).data(),
                                                 to_double(lg).data(), BH, H, n, m, dv, 64);
  std::vector<double> o_last;
  for (int64_t bh = 0; bh < BH; ++bh) {
    const auto at = o_ref.begin() + (bh * n + n - 1) * dv;
    o_last.insert(o_last.end(), at, at + dv);
  }
  ctx.compare(shape_name("decay step after prefill: o vs forward's last", type_name<T>(), dims),
              download<T>(o_dev), o_last, threshold<T>());
  ctx.compare(shape_name("decay step after prefill: state", type_name<T>(), dims), download_f32(state_dev),
              state_ref, threshold<T>());
}

DJ_GPU_CHECK(dijiang_decay_decode) {
  const int64_t shapes[][5] = {{4, 2, 1, 64, 64}, {4, 2, 130, 128, 128}, {3, 1, 65, 64, 80}, {2, 2, 40, 20, 24}};
  for (const auto& s : shapes) {
    check_decode<float>(ctx, s[0], s[1], s[2], s[3], s[4]);
    check_decode<bf16>(ctx, s[0], s[1], s[2], s[3], s[4]);
  }
}

// Head sizes 32, 80 and 256 (prefill chunk 64: 32 for m = 256 where that is what fits).
DJ_GPU_CHECK(dijiang_decay_decode_heads) {
  std::vector<std::array<int64_t, 5>> shapes = {{3, 1, 1, 256, 256}, {2, 2, 66, 256, 256}, {4, 2, 33, 32, 32},
                                                {2, 2, 65, 80, 80},   {2, 1, 40, 256, 80},  {2, 1, 40, 80, 256}};
  if (!kEmulated) shapes.push_back({8, 8, 1025, 256, 256});  // on a GPU also a training size
  for (const auto& s : shapes) {
    check_decode<float>(ctx, s[0], s[1], s[2], s[3], s[4]);
    check_decode<bf16>(ctx, s[0], s[1], s[2], s[3], s[4]);
  }
}

// ---- GroupNorm + gate --------------------------------------------------------------------------------

template <typename T>
void check_group_norm_gate(Context& ctx, int64_t rows, int64_t channels, int64_t groups) {
  const std::string dims =
      "rows=" + std::to_string(rows) + " channels=" + std::to_string(channels) + " groups=" + std::to_string(groups);
  const size_t count = static_cast<size_t>(rows * channels), stats = static_cast<size_t>(rows * groups);
  const std::vector<float> x = representable<T>(ctx.normal(count, 2.f));
  const std::vector<float> g = representable<T>(ctx.normal(count, 2.f));
  const std::vector<float> w = ctx.uniform(static_cast<size_t>(channels), 0.5f, 1.5f);
  const std::vector<float> b = ctx.normal(static_cast<size_t>(channels), 0.3f);
  const double eps = 1e-5;
  auto x_dev = upload<T>(x);
  auto g_dev = upload<T>(g);
  DeviceBuffer<float> w_dev(w), b_dev(b);

  auto y_dev = output<T>(ctx, count);
  auto gn_dev = output<T>(ctx, count);
  auto mean_dev = output_f32(ctx, stats);
  auto rstd_dev = output_f32(ctx, stats);
  dj::cuda::group_norm_gate_forward<T>(dptr<T>(y_dev), dptr<T>(gn_dev), mean_dev.get(), rstd_dev.get(),
                                       dptr<T>(x_dev), w_dev.get(), b_dev.get(), dptr<T>(g_dev), rows, channels,
                                       groups, static_cast<float>(eps), ctx.stream);
  ctx.sync("group_norm_gate_forward");
  std::vector<double> gn_ref(count), mean_ref(stats), rstd_ref(stats), y_ref(count);
  const std::vector<double> x_d = to_double(x), g_d = to_double(g), w_d = to_double(w), b_d = to_double(b);
  dj::cpu::group_norm_forward<double>(gn_ref.data(), mean_ref.data(), rstd_ref.data(), x_d.data(), w_d.data(),
                                      b_d.data(), rows, channels, groups, eps);
  dj::cpu::silu_gate_forward<double>(y_ref.data(), g_d.data(), gn_ref.data(), static_cast<int64_t>(count));
  const char* type = type_name<T>();
  ctx.compare(shape_name("group_norm_gate fwd y", type, dims), download<T>(y_dev), y_ref, threshold<T>());
  ctx.compare(shape_name("group_norm_gate fwd gn", type, dims), download<T>(gn_dev), gn_ref, threshold<T>());
  ctx.compare(shape_name("group_norm_gate fwd mean", type, dims), download_f32(mean_dev), mean_ref,
              threshold<T>());
  ctx.compare(shape_name("group_norm_gate fwd rstd", type, dims), download_f32(rstd_dev), rstd_ref,
              threshold<T>());

  // Backward from the forward's own statistics (the GPU's, so both sides see the same ones).
  const std::vector<double> mean_gpu = download_f32(mean_dev), rstd_gpu = download_f32(rstd_dev);
  const std::vector<float> dy = representable<T>(ctx.normal(count));
  const std::vector<float> dw0 = ctx.normal(static_cast<size_t>(channels));
  const std::vector<float> db0 = ctx.normal(static_cast<size_t>(channels));
  auto dy_dev = upload<T>(dy);
  auto dx_dev = output<T>(ctx, count);
  auto dg_dev = output<T>(ctx, count);
  DeviceBuffer<float> dw_dev(dw0), db_dev(db0);
  dj::cuda::group_norm_gate_backward<T>(dptr<T>(dx_dev), dptr<T>(dg_dev), dw_dev.get(), db_dev.get(),
                                        dptr<T>(dy_dev), dptr<T>(x_dev), dptr<T>(g_dev), w_dev.get(), b_dev.get(),
                                        mean_dev.get(), rstd_dev.get(), rows, channels, groups, ctx.stream);
  ctx.sync("group_norm_gate_backward");
  std::vector<double> gn_gpu_stats(count), unused_mean(stats), unused_rstd(stats);
  // GN(x) recomputed from the GPU statistics, as the kernel does.
  {
    const int64_t size = channels / groups;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < channels; ++c) {
        const size_t at = static_cast<size_t>(r * channels + c), st = static_cast<size_t>(r * groups + c / size);
        gn_gpu_stats[at] = (x_d[at] - mean_gpu[st]) * rstd_gpu[st] * w_d[static_cast<size_t>(c)] +
                           b_d[static_cast<size_t>(c)];
      }
  }
  std::vector<double> dg_ref(count), dgn_ref(count), dx_ref(count), dw_ref = to_double(dw0), db_ref = to_double(db0);
  dj::cpu::silu_gate_backward<double>(dg_ref.data(), dgn_ref.data(), to_double(dy).data(), g_d.data(),
                                      gn_gpu_stats.data(), static_cast<int64_t>(count));
  dj::cpu::group_norm_backward<double>(dx_ref.data(), dw_ref.data(), db_ref.data(), dgn_ref.data(), x_d.data(),
                                       w_d.data(), mean_gpu.data(), rstd_gpu.data(), rows, channels, groups);
  ctx.compare(shape_name("group_norm_gate bwd dx", type, dims), download<T>(dx_dev), dx_ref, threshold<T>());
  ctx.compare(shape_name("group_norm_gate bwd dg", type, dims), download<T>(dg_dev), dg_ref, threshold<T>());
  ctx.compare(shape_name("group_norm_gate bwd dw (+=)", type, dims), download_f32(dw_dev), dw_ref, threshold<T>());
  ctx.compare(shape_name("group_norm_gate bwd db (+=)", type, dims), download_f32(db_dev), db_ref, threshold<T>());
}

DJ_GPU_CHECK(dijiang_group_norm_gate) {
  const int64_t shapes[][3] = {{37, 1024, 64}, {5, 256, 4}, {9, 30, 5}, {64, 2048, 128}, {3, 48, 16}};
  for (const auto& s : shapes) {
    check_group_norm_gate<float>(ctx, s[0], s[1], s[2]);
    check_group_norm_gate<bf16>(ctx, s[0], s[1], s[2]);
  }
}

// ---- causal softmax attention --------------------------------------------------------------------

template <typename T>
void check_causal_attention(Context& ctx, int64_t BH, int64_t T_len, int64_t d) {
  const std::string dims = "BH=" + std::to_string(BH) + " T=" + std::to_string(T_len) + " d=" + std::to_string(d);
  const size_t count = static_cast<size_t>(BH * T_len * d), rows = static_cast<size_t>(BH * T_len);
  const float scale = 1.f / std::sqrt(static_cast<float>(d));
  const std::vector<float> q = representable<T>(ctx.normal(count));
  const std::vector<float> k = representable<T>(ctx.normal(count));
  const std::vector<float> v = representable<T>(ctx.normal(count));
  auto q_dev = upload<T>(q);
  auto k_dev = upload<T>(k);
  auto v_dev = upload<T>(v);
  const std::vector<double> q_d = to_double(q), k_d = to_double(k), v_d = to_double(v);

  auto o_dev = output<T>(ctx, count);
  auto lse_dev = output_f32(ctx, rows);
  dj::cuda::causal_attention_forward<T>(dptr<T>(o_dev), lse_dev.get(), dptr<T>(q_dev), dptr<T>(k_dev),
                                        dptr<T>(v_dev), BH, T_len, d, scale, ctx.stream);
  ctx.sync("causal_attention_forward");
  std::vector<double> o_ref(count), lse_ref(rows);
  dj::cpu::causal_attention_forward<double>(o_ref.data(), lse_ref.data(), q_d.data(), k_d.data(), v_d.data(), BH,
                                            T_len, d, static_cast<double>(scale));
  ctx.compare(shape_name("causal_attention fwd o", type_name<T>(), dims), download<T>(o_dev), o_ref, threshold<T>());
  ctx.compare(shape_name("causal_attention fwd lse", type_name<T>(), dims), download_f32(lse_dev), lse_ref,
              threshold<T>());

  // Backward from the reference forward's o (rounded to T) and lse (rounded to fp32), on both sides.
  const std::vector<float> o_in = representable<T>(to_float(o_ref));
  const std::vector<float> lse_in = to_float(lse_ref);
  const std::vector<float> dout = representable<T>(ctx.normal(count));
  auto o_in_dev = upload<T>(o_in);
  DeviceBuffer<float> lse_in_dev(lse_in);
  auto dout_dev = upload<T>(dout);
  auto dq_dev = output<T>(ctx, count);
  auto dk_dev = output<T>(ctx, count);
  auto dv_dev = output<T>(ctx, count);
  dj::cuda::causal_attention_backward<T>(dptr<T>(dq_dev), dptr<T>(dk_dev), dptr<T>(dv_dev), dptr<T>(dout_dev),
                                         dptr<T>(q_dev), dptr<T>(k_dev), dptr<T>(v_dev), dptr<T>(o_in_dev),
                                         lse_in_dev.get(), BH, T_len, d, scale, ctx.stream);
  ctx.sync("causal_attention_backward");
  std::vector<double> dq_ref(count), dk_ref(count), dv_ref(count);
  dj::cpu::causal_attention_backward<double>(dq_ref.data(), dk_ref.data(), dv_ref.data(), to_double(dout).data(),
                                             q_d.data(), k_d.data(), v_d.data(), to_double(o_in).data(),
                                             to_double(lse_in).data(), BH, T_len, d, static_cast<double>(scale));
  if (T_len > 1) {
    ctx.compare(shape_name("causal_attention bwd dq", type_name<T>(), dims), download<T>(dq_dev), dq_ref,
                threshold<T>());
    ctx.compare(shape_name("causal_attention bwd dk", type_name<T>(), dims), download<T>(dk_dev), dk_ref,
                threshold<T>());
  } else {
    // One key per row: softmax is 1 whatever the score, so dq = dk = 0 exactly and the reference
    // holds only rounding noise; check for ~0 (absolute, inputs are O(1)) instead.
    auto small = [](const std::vector<double>& values) {
      return std::all_of(values.begin(), values.end(),
                         [](double x) { return std::isfinite(x) && std::fabs(x) < 1e-4; });
    };
    ctx.expect(shape_name("causal_attention bwd dq = 0 (T = 1)", type_name<T>(), dims), small(download<T>(dq_dev)));
    ctx.expect(shape_name("causal_attention bwd dk = 0 (T = 1)", type_name<T>(), dims), small(download<T>(dk_dev)));
  }
  ctx.compare(shape_name("causal_attention bwd dv", type_name<T>(), dims), download<T>(dv_dev), dv_ref,
              threshold<T>());
}

DJ_GPU_CHECK(causal_attention) {
  const int64_t shapes[][3] = {{3, 1, 64}, {2, 100, 64}, {2, 129, 128}, {1, 257, 128}, {2, 70, 80}, {2, 63, 20}};
  for (const auto& s : shapes) {
    check_causal_attention<float>(ctx, s[0], s[1], s[2]);
    check_causal_attention<bf16>(ctx, s[0], s[1], s[2]);
  }
}

// Pythia's other head sizes: 32, 80 and 256. Above 128 each block writes 128 of the output
// columns (two parts, the second ragged for d = 200 and 130) and recomputes the scores over all
// of d; fp32 uses 32-key tiles and 32-row dQ and dK/dV blocks there. T = 1, T below one tile, T =
// k tiles ± 1 for the 64- and 32-row tiles, and d = 130 without the 16-byte path.
DJ_GPU_CHECK(causal_attention_heads) {
  std::vector<std::array<int64_t, 3>> shapes = {{2, 1, 256},   {2, 37, 256}, {1, 129, 256}, {2, 95, 256},
                                                {1, 100, 200}, {1, 50, 130}, {2, 65, 32},   {2, 129, 80}};
  if (!kEmulated) {  // on a GPU also training sizes (many tiles)
    shapes.push_back({8, 1025, 256});
    shapes.push_back({4, 1000, 80});
    shapes.push_back({8, 513, 32});
  }
  for (const auto& s : shapes) {
    check_causal_attention<float>(ctx, s[0], s[1], s[2]);
    check_causal_attention<bf16>(ctx, s[0], s[1], s[2]);
  }
}

// ---- benchmarks ------------------------------------------------------------------------------------
// Ceilings of the H200 as measured on this workplace's machines (.library/device/KINDS.md): dense
// bf16 matrix products 790 TFLOP/s on random data, device-to-device copy 4.3 TB/s (datasheet:
// 990 TFLOP/s, 4.8 TB/s). The floor of a row is max(FLOPs / 790 T, bytes / 4.3 TB/s).
constexpr double kPeakFlops = 790e12;
constexpr double kPeakBytes = 4.3e12;

double floor_ms(double flops, double bytes) { return 1e3 * std::max(flops / kPeakFlops, bytes / kPeakBytes); }

// A bf16 device tensor of `count` random N(0, 1) values: 1 Mi values drawn on the host, then
// replicated on the device by doubling copies.
DeviceBuffer<uint16_t> random_bf16(Context& ctx, size_t count) {
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

bf16* bp(const DeviceBuffer<uint16_t>& b) { return reinterpret_cast<bf16*>(b.get()); }

std::string fmt1(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f", v);
  return buf;
}

// DiJiang attention (feature maps of q and k, decay attention, m = dv = d, chunk 64) against the
// softmax-attention kernel, forward and forward + backward, B = 4, H = 16, bf16.
//
// FLOPs per token and head (reference page, section 4; c = 64): attention forward 4 d (d + c),
// backward 2.5x that (dA, A, dQ, dK, dV products and the state and adjoint recursions); the two
// feature maps 2 · 2 d² forward and 2 · 2 d² backward. Softmax: forward 2 T d per token (causal
// half of 4 T d), backward 2.5x. Bytes: inputs read once and outputs written once, bf16:
// forward q, k, v, o (4 d 2 bytes per token and head), forward + backward adds dout, q, k, v, dq,
// dk, dv (11 d 2 bytes in all).
DJ_GPU_BENCH(dijiang_vs_softmax) {
  const int64_t B = 4, H = 16, BH = B * H, c = 64;
  for (const int64_t d : {int64_t{64}, int64_t{128}, int64_t{256}, int64_t{80}}) {
    const std::vector<float> P = projection(ctx, d);
    DeviceBuffer<float> P_dev(P);
    DeviceBuffer<float> lg_dev(reference_log_gamma(H));
    for (const int64_t L : {int64_t{2048}, int64_t{4096}, int64_t{8192}, int64_t{16384}}) {
      const size_t count = static_cast<size_t>(BH * L * d);
      auto q = random_bf16(ctx, count);
      auto k = random_bf16(ctx, count);
      auto v = random_bf16(ctx, count);
      auto dout = random_bf16(ctx, count);
      DeviceBuffer<uint16_t> fq(count), fk(count), o(count), dfq(count), dfk(count), dq(count), dk(count),
          dv(count);
      DeviceBuffer<float> lse(static_cast<size_t>(BH * L));
      const int64_t rows = BH * L;
      cudaStream_t s = ctx.stream;

      auto dijiang_forward = [&] {
        dj::cuda::feature_map_forward(bp(fq), bp(q), P_dev.get(), rows, d, s);
        dj::cuda::feature_map_forward(bp(fk), bp(k), P_dev.get(), rows, d, s);
        dj::cuda::decay_attention_forward(bp(o), bp(fq), bp(fk), bp(v), lg_dev.get(), BH, H, L, d, d, c, s);
      };
      auto dijiang_both = [&] {
        dijiang_forward();
        dj::cuda::decay_attention_backward(bp(dfq), bp(dfk), bp(dv), static_cast<float*>(nullptr), bp(dout),
                                           bp(fq), bp(fk), bp(v), lg_dev.get(), BH, H, L, d, d, c, s);
        dj::cuda::feature_map_backward(bp(dq), bp(dfq), bp(fq), P_dev.get(), rows, d, s);
        dj::cuda::feature_map_backward(bp(dk), bp(dfk), bp(fk), P_dev.get(), rows, d, s);
      };
      auto softmax_forward = [&] {
        dj::cuda::causal_attention_forward(bp(o), lse.get(), bp(q), bp(k), bp(v), BH, L, d,
                                           static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))), s);
      };
      auto softmax_both = [&] {
        softmax_forward();
        dj::cuda::causal_attention_backward(bp(dq), bp(dk), bp(dv), bp(dout), bp(q), bp(k), bp(v), bp(o),
                                            lse.get(), BH, L, d,
                                            static_cast<float>(1.0 / std::sqrt(static_cast<double>(d))), s);
      };

      const double tokens = static_cast<double>(BH * L), dd = static_cast<double>(d);
      const double dj_attn_fwd = 4.0 * dd * (dd + static_cast<double>(c)) * tokens;
      const double dj_fm = 4.0 * dd * dd * tokens;  // two feature maps, one direction
      const double dj_fwd_flops = dj_attn_fwd + dj_fm, dj_both_flops = 3.5 * dj_attn_fwd + 2.0 * dj_fm;
      const double sm_fwd_flops = 2.0 * static_cast<double>(L) * dd * tokens, sm_both_flops = 3.5 * sm_fwd_flops;
      const double fwd_bytes = 4.0 * dd * 2.0 * tokens, both_bytes = 11.0 * dd * 2.0 * tokens;
      const int repeats = L >= 8192 ? 3 : 5;
      const std::string dims = "B=4 H=16 d=" + std::to_string(d) + " L=" + std::to_string(L);

      auto row = [&](const std::string& name, const std::function<void()>& fn, double flops, double bytes) {
        const double ms = ctx.time_ms(fn, repeats, 1);
        BenchRow r;
        r.name = name + " " + dims;
        r.ms = ms;
        r.tflops = flops / (ms * 1e-3) / 1e12;
        r.gbps = bytes / (ms * 1e-3) / 1e9;
        r.floor_ms = floor_ms(flops, bytes);
        r.note = (flops / kPeakFlops > bytes / kPeakBytes ? "compute floor" : "memory floor") +
                 std::string(", ") + fmt1(ms / r.floor_ms) + "x floor";
        ctx.bench(r);
        return ms;
      };
      const double djf = row("dijiang fwd (fmap+attn)", dijiang_forward, dj_fwd_flops, fwd_bytes);
      const double djb = row("dijiang fwd+bwd (fmap+attn)", dijiang_both, dj_both_flops, both_bytes);
      const double smf = row("softmax fwd", softmax_forward, sm_fwd_flops, fwd_bytes);
      const double smb = row("softmax fwd+bwd", softmax_both, sm_both_flops, both_bytes);
      BenchRow ratio;
      ratio.name = "speedup dijiang/softmax " + dims;
      ratio.note = "fwd " + fmt1(smf / djf) + "x, fwd+bwd " + fmt1(smb / djb) + "x";
      ctx.bench(ratio);
    }
  }
}

// One decoding step of DiJiang for B = 4, H = 16 rows (m = dv = d) after a prefill of 2k and 16k
// tokens: its cost does not depend on the context (the state is m x dv per row). The floor is one
// read and one write of the fp32 states; the note gives, for comparison, the floor of a softmax
// decoding step at that context (reading the bf16 KV cache once).
DJ_GPU_BENCH(dijiang_decode) {
  const int64_t B = 4, H = 16, BH = B * H;
  DeviceBuffer<float> lg_dev(reference_log_gamma(H));
  for (const int64_t d : {int64_t{64}, int64_t{128}, int64_t{256}, int64_t{80}}) {
    for (const int64_t ctx_len : {int64_t{2048}, int64_t{16384}}) {
      auto fk = random_bf16(ctx, static_cast<size_t>(BH * ctx_len * d));
      auto v = random_bf16(ctx, static_cast<size_t>(BH * ctx_len * d));
      auto q1 = random_bf16(ctx, static_cast<size_t>(BH * d));
      auto k1 = random_bf16(ctx, static_cast<size_t>(BH * d));
      auto v1 = random_bf16(ctx, static_cast<size_t>(BH * d));
      DeviceBuffer<uint16_t> o(static_cast<size_t>(BH * d));
      DeviceBuffer<float> state(static_cast<size_t>(BH * d * d));
      const std::string dims = "B=4 H=16 d=" + std::to_string(d) + " ctx=" + std::to_string(ctx_len);

      auto prefill = [&] {
        dj::cuda::decay_attention_prefill_state(state.get(), bp(fk), bp(v), lg_dev.get(), BH, H, ctx_len, d, d, 64,
                                                ctx.stream);
      };
      const double tokens = static_cast<double>(BH * ctx_len), dd = static_cast<double>(d);
      {
        const double ms = ctx.time_ms(prefill, 3, 1);
        BenchRow r;
        r.name = "dijiang prefill state " + dims;
        r.ms = ms;
        const double flops = 2.0 * dd * dd * tokens, bytes = 2.0 * dd * 2.0 * tokens;
        r.tflops = flops / (ms * 1e-3) / 1e12;
        r.gbps = bytes / (ms * 1e-3) / 1e9;
        r.floor_ms = floor_ms(flops, bytes);
        ctx.bench(r);
      }
      prefill();
      auto step = [&] {
        dj::cuda::decay_attention_step(bp(o), state.get(), bp(q1), bp(k1), bp(v1), lg_dev.get(), BH, H, d, d,
                                       ctx.stream);
      };
      const double ms = ctx.time_ms(step, 50, 5);
      BenchRow r;
      r.name = "dijiang decode step " + dims;
      r.ms = ms;
      const double bytes = static_cast<double>(BH) * (2.0 * dd * dd * 4.0 + 4.0 * dd * 2.0);
      const double flops = static_cast<double>(BH) * 4.0 * dd * dd;
      r.tflops = flops / (ms * 1e-3) / 1e12;
      r.gbps = bytes / (ms * 1e-3) / 1e9;
      r.floor_ms = floor_ms(flops, bytes);
      const double softmax_floor = 1e3 * (static_cast<double>(BH) * 2.0 * static_cast<double>(ctx_len) * dd * 2.0) /
                                   kPeakBytes;
      r.note = "softmax decode floor at this context: " + fmt1(softmax_floor * 1e3) + " us";
      ctx.bench(r);
    }
  }
}

}  // namespace
