// Workbench of the fused softmax + cross-entropy: its check against the CPU reference, its benchmark.
// Conventions: tests/gpu/check.h; shared helpers: check_support.h.
#include "tests/gpu/check_support.h"

namespace dj::gpucheck {
namespace {

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

// ---- cross-entropy with distillation -----------------------------------------------------------

template <typename T>
void check_distill(Context& ctx, int64_t rows, int64_t vocab, bool write_gradient, double temperature) {
  const std::string shape = format("%s %lldx%lld tau=%g%s", type_name<T>(), static_cast<long long>(rows),
                                   static_cast<long long>(vocab), temperature, write_gradient ? " grad" : "");
  const size_t n = static_cast<size_t>(rows * vocab);
  const auto logits = inputs<T>(ctx, n, 3.0f);
  const auto teacher = inputs<T>(ctx, n, 3.0f);
  auto targets = random_ids(ctx, static_cast<size_t>(rows), 0, static_cast<int32_t>(vocab));
  if (rows > 1) targets.back() = -100;  // an ignored row
  const float grad_scale = 1.0f / static_cast<float>(rows);
  auto ref = logits;
  const cpu::CrossEntropyResult expected = cpu::distill_cross_entropy<float>(
      ref.data(), teacher.data(), targets.data(), rows, vocab, write_gradient, grad_scale, 0.7, temperature);
  auto dlogits = upload<T>(logits);
  auto dteacher = upload<T>(teacher);
  DeviceBuffer<int32_t> dtargets(targets);
  DeviceBuffer<double> row_loss(static_cast<size_t>(rows));
  DeviceBuffer<dc::CrossEntropyTotals> totals(1);
  dc::distill_cross_entropy_async<T>(dlogits.get(), dteacher.get(), dtargets.get(), rows, vocab, write_gradient,
                                     grad_scale, 0.7f, static_cast<float>(temperature), row_loss.get(), totals.get(),
                                     ctx.stream);
  ctx.sync("distill_cross_entropy_async");
  const dc::CrossEntropyTotals got = totals.download().at(0);
  ctx.compare("distill loss " + shape, std::vector<double>{got.loss_sum}, std::vector<double>{expected.loss_sum},
              kIsBf16<T> ? 1e-5 : 1e-6);
  ctx.expect("distill count " + shape, got.count == expected.count);
  const auto after = download(dlogits);
  if (write_gradient)
    ctx.compare("distill gradient " + shape, to_double(after), to_double(representable<T>(ref)), tolerance<T>());
  else
    ctx.expect("distill leaves logits " + shape, bits_equal(after, logits));
}

// ---- the attention-transfer loss ---------------------------------------------------------------

template <typename T>
void check_squared_error(Context& ctx, int64_t n, bool in_place) {
  const std::string shape = format("%s n=%lld%s", type_name<T>(), static_cast<long long>(n), in_place ? " in place" : "");
  const size_t count = static_cast<size_t>(n);
  const auto a = inputs<T>(ctx, count);
  const auto b = inputs<T>(ctx, count);
  const float grad_scale = 2.0f / static_cast<float>(std::max<int64_t>(n, 1));
  std::vector<float> ref(count);
  const double expected = cpu::squared_error<float>(ref.data(), a.data(), b.data(), n, grad_scale);
  auto da = upload<T>(a);
  auto db = upload<T>(b);
  DeviceBuffer<T> grad(count);
  ctx.poison(grad);
  DeviceBuffer<double> sum(1);
  dc::squared_error_async<T>(in_place ? da.get() : grad.get(), da.get(), db.get(), n, grad_scale, sum.get(), ctx.stream);
  ctx.sync("squared_error_async");
  const std::vector<double> got = sum.download();
  ctx.compare("squared_error sum " + shape, std::vector<double>{got.at(0)}, std::vector<double>{expected}, 1e-12);
  const auto written = download(in_place ? da : grad);
  // Each gradient is one rounded product of the same fp32 difference on both sides.
  ctx.expect("squared_error gradient " + shape, bits_equal(written, representable<T>(ref)));
}

}  // namespace

DJ_GPU_CHECK(ops_distill) {
  for (const double tau : {1.0, 2.0}) {
    check_distill<float>(ctx, 1, 50304, true, tau);
    check_distill<float>(ctx, 33, 1001, true, tau);
    check_distill<bf16>(ctx, 33, 1001, true, tau);
  }
  check_distill<float>(ctx, 16, 50257, false, 1.5);
  check_distill<bf16>(ctx, 8, 50304, true, 1.5);
}

DJ_GPU_CHECK(ops_squared_error) {
  for (const bool in_place : {false, true}) {
    check_squared_error<float>(ctx, 1, in_place);
    check_squared_error<bf16>(ctx, 4097, in_place);
    check_squared_error<float>(ctx, kEmulated ? 100003 : 4000037, in_place);
    check_squared_error<bf16>(ctx, kEmulated ? 100003 : 4000037, in_place);
  }
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

}  // namespace dj::gpucheck
