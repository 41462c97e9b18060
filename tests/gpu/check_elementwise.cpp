// Workbench of the elementwise ops (GELU, fp32 <-> bf16 conversions, scaling): its check against the CPU reference, its benchmark.
// Conventions: tests/gpu/check.h; shared helpers: check_support.h.
#include "tests/gpu/check_support.h"

namespace dj::gpucheck {
namespace {

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

DJ_GPU_CHECK(ops_convert) {
  check_conversions(ctx, kEmulated ? 100003 : 1000003);
  check_conversions(ctx, 12);
}

// The 410M model's MLP activations: 8192 tokens x 4096. Forward reads x and writes y; backward
// reads dy and x and writes dx (in place on dy, as the model calls it).
DJ_GPU_BENCH(ops_gelu) {
  const int64_t n = int64_t{8192} * 4096;
  auto run = [&](auto tag) {
    using T = decltype(tag);
    DeviceBuffer<T> x(sz(n)), y(sz(n)), dy(sz(n));
    fill_random(ctx, x);
    fill_random(ctx, dy);
    for (const auto kind : {dc::GeluKind::Erf, dc::GeluKind::Tanh}) {
      const char* kind_name = kind == dc::GeluKind::Erf ? "erf" : "tanh";
      const double ms = ctx.time_ms([&] { dc::gelu_forward<T>(y.get(), x.get(), n, kind, ctx.stream); }, 20, 3);
      bench_row(ctx, format("gelu_forward %s %s 8192x4096", kind_name, type_name<T>()), ms, 0.0,
                2.0 * n * sizeof(T));
      const double ms_back =
          ctx.time_ms([&] { dc::gelu_backward<T>(dy.get(), dy.get(), x.get(), n, kind, ctx.stream); }, 20, 3);
      bench_row(ctx, format("gelu_backward %s %s 8192x4096", kind_name, type_name<T>()), ms_back, 0.0,
                3.0 * n * sizeof(T));
    }
  };
  run(bf16{});
  run(float{});
}

}  // namespace dj::gpucheck
