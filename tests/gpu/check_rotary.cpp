// Workbench of the rotary position embedding: its check against the CPU reference, its benchmark.
// Conventions: tests/gpu/check.h; shared helpers: check_support.h.
#include "tests/gpu/check_support.h"

namespace dj::gpucheck {
namespace {

// ---- rotary -------------------------------------------------------------------------------------

template <typename T>
void check_rotary(Context& ctx, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims,
                  int64_t offset) {
  const double base = 10000.0;
  const std::string shape =
      format("%s BH=%lld T=%lld d=%lld r=%lld off=%lld", type_name<T>(), static_cast<long long>(BH),
             static_cast<long long>(T_len), static_cast<long long>(d),
             static_cast<long long>(rotary_dims), static_cast<long long>(offset));
  const size_t n = static_cast<size_t>(BH * T_len * d);
  // One table longer than the sequence: rows past T_len are simply not used.
  const dc::RotaryTable table(T_len + 3, rotary_dims, base, offset);
  for (const bool backward : {false, true}) {
    const auto x = inputs<T>(ctx, n);
    auto ref = x;
    if (backward)
      cpu::rotary_backward<float>(ref.data(), BH, T_len, d, rotary_dims, base, offset);
    else
      cpu::rotary_forward<float>(ref.data(), BH, T_len, d, rotary_dims, base, offset);
    ref = representable<T>(ref);  // bf16: the CPU's float result rounded like the device's store
    auto dxb = upload<T>(x);
    if (backward)
      dc::rotary_backward<T>(dxb.get(), table, BH, T_len, d, ctx.stream);
    else
      dc::rotary_forward<T>(dxb.get(), table, BH, T_len, d, ctx.stream);
    ctx.sync("rotary");
    const auto got = download(dxb);
    const std::string name = std::string(backward ? "rotary_backward " : "rotary_forward ") + shape;
    // fp32: the CPU's double rotation rounded once, bit for bit (a CPU reference built with FMA
    // contraction may differ in ~2^-28 of the values). bf16: the device rounds the double rotation
    // once, the reference rounds the CPU's float result again (a rare 1-ulp difference).
    ctx.compare(name, to_double(got), to_double(ref), kIsBf16<T> ? 1e-2 : 1e-6);
    if constexpr (!kIsBf16<T>)
      ctx.expect(name + " bit-identical", bits_equal(got, ref),
                 format("%zu of %zu values differ", bit_mismatches(got, ref), n));
  }
}

}  // namespace

DJ_GPU_CHECK(ops_rotary) {
  const int64_t shapes[][5] = {{6, 37, 64, 16, 0}, {4, 33, 128, 32, 7}, {1, 1, 64, 32, 2047},
                               {3, 20, 64, 64, 100}};
  for (const auto& s : shapes) {
    check_rotary<float>(ctx, s[0], s[1], s[2], s[3], s[4]);
    check_rotary<bf16>(ctx, s[0], s[1], s[2], s[3], s[4]);
  }
}

// The 410M model's queries (or keys) of one micro-batch: 4 sequences x 16 heads, 2048 tokens,
// head size 64 with 16 rotary dimensions, rotated in place. The floor counts the rotary columns
// read and written and the table rows read once (the other columns are not touched).
DJ_GPU_BENCH(ops_rotary) {
  const int64_t BH = 64, T_len = 2048, d = 64, rotary_dims = 16;
  const dc::RotaryTable table(T_len, rotary_dims, 10000.0);
  auto run = [&](auto tag) {
    using T = decltype(tag);
    DeviceBuffer<T> x(sz(BH * T_len * d));
    fill_random(ctx, x);
    const double bytes = 2.0 * BH * T_len * rotary_dims * sizeof(T) + 8.0 * T_len * rotary_dims;
    const double ms =
        ctx.time_ms([&] { dc::rotary_forward<T>(x.get(), table, BH, T_len, d, ctx.stream); }, 20, 3);
    bench_row(ctx, format("rotary_forward %s 64x2048x64 r16", type_name<T>()), ms, 0.0, bytes, "in place");
    const double ms_back =
        ctx.time_ms([&] { dc::rotary_backward<T>(x.get(), table, BH, T_len, d, ctx.stream); }, 20, 3);
    bench_row(ctx, format("rotary_backward %s 64x2048x64 r16", type_name<T>()), ms_back, 0.0, bytes, "in place");
  };
  run(bf16{});
  run(float{});
}

}  // namespace dj::gpucheck
