// Workbench of the decayed attention (kernels/cuda/decay_attention_*.cu): forward, backward, prefill and decoding step: checks against the CPU reference (kernels/cpu) and benchmarks.
// Conventions: tests/gpu/check.h; how the attention checks measure and the helpers they share:
// check_attention_support.h.
#include "tests/gpu/check_attention_support.h"

namespace {

using namespace dj::gpucheck::attention_check;

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
