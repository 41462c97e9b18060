// Workbench of the DiJiang feature map and feature weights (kernels/cuda/dijiang_feature_map.cu): checks against the CPU reference (kernels/cpu) and benchmarks.
// Conventions: tests/gpu/check.h; how the attention checks measure and the helpers they share:
// check_attention_support.h.
#include "tests/gpu/check_attention_support.h"

namespace {

using namespace dj::gpucheck::attention_check;

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

// ---- benchmarks ------------------------------------------------------------------------------------

// The feature maps of the 410M model's queries (or keys) of one micro-batch, bf16: B = 4, H = 16,
// 2048 tokens at each head size. Feature map: x · P (2 d² FLOPs per row) and a softmax, reading x
// and writing s forward, reading ds and s and writing dx backward. Feature weights: elementwise,
// with the dw column sums backward.
DJ_GPU_BENCH(dijiang_feature_map) {
  const int64_t BH = 64, n = 2048, rows = BH * n, H = 16;
  for (const int64_t d : {int64_t{64}, int64_t{128}, int64_t{256}, int64_t{80}}) {
    const size_t count = static_cast<size_t>(rows * d);
    DeviceBuffer<float> P_dev(projection(ctx, d));
    DeviceBuffer<float> w(std::vector<float>(static_cast<size_t>(H * d), 1.0f)), dw(static_cast<size_t>(H * d));
    DJ_CUDA(cudaMemset(dw.get(), 0, dw.size() * sizeof(float)));
    auto x = random_bf16(ctx, count);
    auto ds = random_bf16(ctx, count);
    DeviceBuffer<uint16_t> s(count), dx(count), phi(count);
    const std::string dims = " B=4 H=16 n=2048 d=" + std::to_string(d);
    const double values = static_cast<double>(count);
    const double matmul = 2.0 * values * static_cast<double>(d);
    bench_row(ctx, "feature_map_forward bf16" + dims,
              ctx.time_ms([&] { dj::cuda::feature_map_forward(bp(s), bp(x), P_dev.get(), rows, d, ctx.stream); }, 20,
                          3),
              matmul, 4.0 * values);
    bench_row(ctx, "feature_map_backward bf16" + dims,
              ctx.time_ms([&] {
                dj::cuda::feature_map_backward(bp(dx), bp(ds), bp(s), P_dev.get(), rows, d, ctx.stream);
              }, 20, 3),
              matmul, 6.0 * values);
    bench_row(ctx, "feature_weights_forward bf16" + dims,
              ctx.time_ms([&] {
                dj::cuda::feature_weights_forward(bp(phi), bp(s), w.get(), BH, H, n, d, ctx.stream);
              }, 20, 3),
              values, 4.0 * values);
    bench_row(ctx, "feature_weights_backward bf16" + dims,
              ctx.time_ms([&] {
                dj::cuda::feature_weights_backward(bp(dx), dw.get(), bp(ds), bp(s), w.get(), BH, H, n, d, ctx.stream);
              }, 20, 3),
              3.0 * values, 6.0 * values);
  }
}

}  // namespace
