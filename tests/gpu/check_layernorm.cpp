// Workbench of LayerNorm: its check against the CPU reference, its benchmark.
// Conventions: tests/gpu/check.h; shared helpers: check_support.h.
#include "tests/gpu/check_support.h"

namespace dj::gpucheck {
namespace {

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

}  // namespace

DJ_GPU_CHECK(ops_layernorm) {
  const int64_t shapes[][2] = {{1, 64}, {5, 33}, {37, 1000}, {300, 96}, {256, 1024}, {3, 4100}};
  for (const auto& s : shapes) {
    check_layernorm<float>(ctx, s[0], s[1]);
    check_layernorm<bf16>(ctx, s[0], s[1]);
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

}  // namespace dj::gpucheck
