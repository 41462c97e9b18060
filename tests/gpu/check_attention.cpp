// Workbench of the teacher's causal softmax attention (kernels/cuda/attention.cu), and DiJiang attention against it: checks against the CPU reference (kernels/cpu) and benchmarks.
// Conventions: tests/gpu/check.h; how the attention checks measure and the helpers they share:
// check_attention_support.h.
#include "tests/gpu/check_attention_support.h"

namespace {

using namespace dj::gpucheck::attention_check;

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

}  // namespace
