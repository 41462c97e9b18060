// Workbench of the linear-attention baselines' kernels (kernels/cuda/linear_attention.cu): the
// feature maps (performer, cosformer, elu; query and key forms) and the normalisation against the CPU
// reference (kernels/cpu/linear_attention.cpp), and their benchmarks.
// Conventions: tests/gpu/check.h; how the attention checks measure and the helpers they share:
// check_attention_support.h.
#include "kernels/cpu/linear_attention.h"
#include "kernels/cuda/linear_attention.h"
#include "tests/gpu/check_attention_support.h"

namespace {

using namespace dj::gpucheck::attention_check;
using dj::cpu::LinearFeatureMap;

const char* map_name(LinearFeatureMap map) {
  return map == LinearFeatureMap::Performer ? "performer" : map == LinearFeatureMap::CosFormer ? "cosformer" : "elu";
}

// Random orthogonal-ish features for the performer: a DCT projection of Gaussian scales (d x d).
template <typename T>
void check_features(Context& ctx, LinearFeatureMap map, bool query, int64_t BH, int64_t n, int64_t d) {
  const int64_t m = dj::cpu::linear_feature_count(map, d), rows = BH * n, horizon = n + 7, position0 = 5;
  const std::string dims = std::string(map_name(map)) + (query ? " query" : " key") + " BH=" + std::to_string(BH) +
                           " n=" + std::to_string(n) + " d=" + std::to_string(d);
  const std::vector<float> P = projection(ctx, d);
  DeviceBuffer<float> P_dev(P);
  const std::vector<float> x = representable<T>(ctx.normal(static_cast<size_t>(rows * d)));
  auto x_dev = upload<T>(x);
  auto f_dev = output<T>(ctx, static_cast<size_t>(rows * m));
  dj::cuda::linear_feature_forward<T>(dptr<T>(f_dev), dptr<T>(x_dev), P_dev.get(), map, query, BH, n, d, position0,
                                      horizon, ctx.stream);
  ctx.sync("linear_feature_forward");
  std::vector<double> f_ref(static_cast<size_t>(rows * m));
  dj::cpu::linear_feature_forward<double>(f_ref.data(), to_double(x).data(), to_double(P).data(), map, query, BH, n, d,
                                          position0, horizon);
  ctx.compare(shape_name("linear_feature fwd", type_name<T>(), dims), download<T>(f_dev), f_ref, threshold<T>());

  const std::vector<float> f = representable<T>(to_float(f_ref));
  const std::vector<float> df = representable<T>(ctx.normal(static_cast<size_t>(rows * m)));
  auto f_in = upload<T>(f);
  auto df_dev = upload<T>(df);
  auto dx_dev = output<T>(ctx, static_cast<size_t>(rows * d));
  dj::cuda::linear_feature_backward<T>(dptr<T>(dx_dev), dptr<T>(df_dev), dptr<T>(f_in), dptr<T>(x_dev), P_dev.get(),
                                       map, query, BH, n, d, position0, horizon, ctx.stream);
  ctx.sync("linear_feature_backward");
  std::vector<double> dx_ref(static_cast<size_t>(rows * d));
  dj::cpu::linear_feature_backward<double>(dx_ref.data(), to_double(df).data(), to_double(f).data(),
                                           to_double(x).data(), to_double(P).data(), map, query, BH, n, d, position0,
                                           horizon);
  ctx.compare(shape_name("linear_feature bwd", type_name<T>(), dims), download<T>(dx_dev), dx_ref, threshold<T>());
}

template <typename T>
void check_normalize(Context& ctx, int64_t rows, int64_t dv) {
  const std::string dims = "rows=" + std::to_string(rows) + " dv=" + std::to_string(dv);
  const size_t wide = static_cast<size_t>(rows * (dv + 1)), narrow = static_cast<size_t>(rows * dv);
  const std::vector<float> v = representable<T>(ctx.normal(narrow));
  auto v_dev = upload<T>(v);
  auto vx_dev = output<T>(ctx, wide);
  dj::cuda::append_ones<T>(dptr<T>(vx_dev), dptr<T>(v_dev), rows, dv, ctx.stream);
  ctx.sync("append_ones");
  std::vector<double> vx_ref(wide);
  dj::cpu::append_ones<double>(vx_ref.data(), to_double(v).data(), rows, dv);
  ctx.compare(shape_name("append_ones", type_name<T>(), dims), download<T>(vx_dev), vx_ref, 0.0);
  auto back_dev = output<T>(ctx, narrow);
  dj::cuda::drop_last_column<T>(dptr<T>(back_dev), dptr<T>(vx_dev), rows, dv, ctx.stream);
  ctx.sync("drop_last_column");
  ctx.compare(shape_name("drop_last_column", type_name<T>(), dims), download<T>(back_dev), to_double(v), 0.0);

  // Numerators and positive denominators (one row with a zero denominator).
  std::vector<float> ox = ctx.normal(wide);
  for (int64_t r = 0; r < rows; ++r) ox[static_cast<size_t>(r * (dv + 1) + dv)] = r == 0 ? 0.f : 0.5f + std::abs(ox[static_cast<size_t>(r * (dv + 1) + dv)]);
  ox = representable<T>(ox);
  auto ox_dev = upload<T>(ox);
  auto o_dev = output<T>(ctx, narrow);
  dj::cuda::normalize_rows_forward<T>(dptr<T>(o_dev), dptr<T>(ox_dev), rows, dv, ctx.stream);
  ctx.sync("normalize_rows_forward");
  std::vector<double> o_ref(narrow);
  dj::cpu::normalize_rows_forward<double>(o_ref.data(), to_double(ox).data(), rows, dv);
  ctx.compare(shape_name("normalize fwd", type_name<T>(), dims), download<T>(o_dev), o_ref, threshold<T>());
  const std::vector<float> o = representable<T>(to_float(o_ref));
  const std::vector<float> dout = representable<T>(ctx.normal(narrow));
  auto o_in = upload<T>(o);
  auto dout_dev = upload<T>(dout);
  auto dox_dev = output<T>(ctx, wide);
  dj::cuda::normalize_rows_backward<T>(dptr<T>(dox_dev), dptr<T>(dout_dev), dptr<T>(o_in), dptr<T>(ox_dev), rows, dv,
                                       ctx.stream);
  ctx.sync("normalize_rows_backward");
  std::vector<double> dox_ref(wide);
  dj::cpu::normalize_rows_backward<double>(dox_ref.data(), to_double(dout).data(), to_double(o).data(),
                                           to_double(ox).data(), rows, dv);
  ctx.compare(shape_name("normalize bwd", type_name<T>(), dims), download<T>(dox_dev), dox_ref, threshold<T>());
}

DJ_GPU_CHECK(linear_feature_map) {
  // Head sizes 64, 128 (cosformer: 256 features, the most the kernels take), 80 and 20, one row and
  // several sequences.
  const int64_t shapes[][3] = {{1, 1, 64}, {3, 17, 64}, {2, 9, 128}, {4, 5, 80}, {2, 33, 20}};
  for (const LinearFeatureMap map : {LinearFeatureMap::Performer, LinearFeatureMap::CosFormer, LinearFeatureMap::Elu})
    for (const bool query : {false, true})
      for (const auto& s : shapes) {
        check_features<float>(ctx, map, query, s[0], s[1], s[2]);
        check_features<bf16>(ctx, map, query, s[0], s[1], s[2]);
      }
}

DJ_GPU_CHECK(linear_normalize) {
  const int64_t shapes[][2] = {{1, 64}, {37, 65}, {300, 20}, {64, 128}};
  for (const auto& s : shapes) {
    check_normalize<float>(ctx, s[0], s[1]);
    check_normalize<bf16>(ctx, s[0], s[1]);
  }
}

// The 410M model's queries of one micro-batch (B = 4, H = 16, 2048 tokens, d = 64) through each
// feature map, and the normalisation of its [v, 1] attention.
DJ_GPU_BENCH(linear_attention) {
  const int64_t BH = 64, n = 2048, d = 64, rows = BH * n;
  DeviceBuffer<float> P_dev(projection(ctx, d));
  auto x = random_bf16(ctx, static_cast<size_t>(rows * d));
  for (const LinearFeatureMap map : {LinearFeatureMap::Performer, LinearFeatureMap::CosFormer, LinearFeatureMap::Elu}) {
    const int64_t m = dj::cpu::linear_feature_count(map, d);
    DeviceBuffer<uint16_t> f(static_cast<size_t>(rows * m)), dx(static_cast<size_t>(rows * d));
    auto df = random_bf16(ctx, static_cast<size_t>(rows * m));
    const double flops = map == LinearFeatureMap::Performer ? 2.0 * rows * d * m : 0.0;
    const std::string name = std::string(map_name(map)) + " bf16 B=4 H=16 n=2048 d=64";
    bench_row(ctx, "linear_feature_forward " + name,
              ctx.time_ms([&] {
                dj::cuda::linear_feature_forward(bp(f), bp(x), P_dev.get(), map, false, BH, n, d, 0, n, ctx.stream);
              }, 20, 3),
              flops, 2.0 * static_cast<double>(rows * (d + m)));
    bench_row(ctx, "linear_feature_backward " + name,
              ctx.time_ms([&] {
                dj::cuda::linear_feature_backward(bp(dx), bp(df), bp(f), bp(x), P_dev.get(), map, false, BH, n, d, 0,
                                                  n, ctx.stream);
              }, 20, 3),
              flops, 2.0 * static_cast<double>(rows * (2 * d + 2 * m)));
  }
  DeviceBuffer<uint16_t> ox(static_cast<size_t>(rows * (d + 1))), o(static_cast<size_t>(rows * d));
  auto dout = random_bf16(ctx, static_cast<size_t>(rows * d));
  DJ_CUDA(cudaMemset(ox.get(), 0, ox.size() * sizeof(uint16_t)));
  bench_row(ctx, "normalize_rows_forward bf16 B=4 H=16 n=2048 d=64",
            ctx.time_ms([&] { dj::cuda::normalize_rows_forward(bp(o), bp(ox), rows, d, ctx.stream); }, 20, 3), 0.0,
            2.0 * static_cast<double>(rows * (2 * d + 1)));
  bench_row(ctx, "normalize_rows_backward bf16 B=4 H=16 n=2048 d=64",
            ctx.time_ms([&] { dj::cuda::normalize_rows_backward(bp(ox), bp(dout), bp(o), bp(ox), rows, d, ctx.stream); },
                        20, 3),
            0.0, 2.0 * static_cast<double>(rows * (4 * d + 2)));
}

}  // namespace
