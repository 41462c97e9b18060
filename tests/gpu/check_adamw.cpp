// Workbench of AdamW, the gradient norm and clipping: its check against the CPU reference, its benchmark.
// Conventions: tests/gpu/check.h; shared helpers: check_support.h.
#include "tests/gpu/check_support.h"

namespace dj::gpucheck {
namespace {

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

}  // namespace

DJ_GPU_CHECK(ops_adamw) {
  check_adamw(ctx, kEmulated ? 100003 : 1000003, true, false);
  check_adamw(ctx, kEmulated ? 1 << 16 : 1 << 20, false, false);
  check_adamw(ctx, 4099, true, true);
  for (const int64_t n : {int64_t(1), int64_t(4095), int64_t(4097), kEmulated ? int64_t(1000003) : int64_t(10000019)})
    check_norm_and_clip(ctx, n);
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
