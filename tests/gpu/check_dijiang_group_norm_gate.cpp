// Workbench of GroupNorm fused with the swish gate (kernels/cuda/dijiang_group_norm_gate.cu): checks against the CPU reference (kernels/cpu) and benchmarks.
// Conventions: tests/gpu/check.h; how the attention checks measure and the helpers they share:
// check_attention_support.h.
#include "tests/gpu/check_attention_support.h"

namespace {

using namespace dj::gpucheck::attention_check;

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

// ---- benchmarks ------------------------------------------------------------------------------------

// The 410M model's attention outputs of one micro-batch, bf16: 8192 tokens x 1024 channels, in the
// reference's 64 groups (head_dim) and per head (16). Forward reads x and g and writes y; backward
// reads dy, x and g and writes dx and dg (w, b, mean and rstd are small).
DJ_GPU_BENCH(dijiang_group_norm_gate) {
  const int64_t rows = 8192, channels = 1024;
  const size_t count = static_cast<size_t>(rows * channels);
  auto x = random_bf16(ctx, count);
  auto g = random_bf16(ctx, count);
  auto dy = random_bf16(ctx, count);
  DeviceBuffer<uint16_t> y(count), dx(count), dg(count);
  DeviceBuffer<float> w(std::vector<float>(static_cast<size_t>(channels), 1.0f)),
      b(std::vector<float>(static_cast<size_t>(channels), 0.0f)), dw(static_cast<size_t>(channels)),
      db(static_cast<size_t>(channels));
  DJ_CUDA(cudaMemset(dw.get(), 0, dw.size() * sizeof(float)));
  DJ_CUDA(cudaMemset(db.get(), 0, db.size() * sizeof(float)));
  for (const int64_t groups : {int64_t{64}, int64_t{16}}) {
    DeviceBuffer<float> mean(static_cast<size_t>(rows * groups)), rstd(static_cast<size_t>(rows * groups));
    const std::string dims = " 8192x1024 groups=" + std::to_string(groups);
    const double values = static_cast<double>(count);
    bench_row(ctx, "group_norm_gate_forward bf16" + dims,
              ctx.time_ms([&] {
                dj::cuda::group_norm_gate_forward(bp(y), static_cast<bf16*>(nullptr), mean.get(), rstd.get(), bp(x),
                                                  w.get(), b.get(), bp(g), rows, channels, groups, 1e-5f, ctx.stream);
              }, 20, 3),
              10.0 * values, 6.0 * values);
    bench_row(ctx, "group_norm_gate_backward bf16" + dims,
              ctx.time_ms([&] {
                dj::cuda::group_norm_gate_backward(bp(dx), bp(dg), dw.get(), db.get(), bp(dy), bp(x), bp(g), w.get(),
                                                   b.get(), mean.get(), rstd.get(), rows, channels, groups,
                                                   ctx.stream);
              }, 20, 3),
              20.0 * values, 10.0 * values);
  }
}

}  // namespace
