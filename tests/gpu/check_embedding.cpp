// Workbench of the token embedding: its check against the CPU reference, its benchmark.
// Conventions: tests/gpu/check.h; shared helpers: check_support.h.
#include "tests/gpu/check_support.h"

namespace dj::gpucheck {
namespace {

// ---- embedding ----------------------------------------------------------------------------------

template <typename T>
void check_embedding(Context& ctx, int64_t n, int64_t vocab, int64_t channels, int32_t id_range) {
  const std::string shape = format("%s n=%lld vocab=%lld C=%lld ids<%d", type_name<T>(),
                                   static_cast<long long>(n), static_cast<long long>(vocab),
                                   static_cast<long long>(channels), id_range);
  const auto table = inputs<T>(ctx, static_cast<size_t>(vocab * channels));
  // Ids from a narrow range repeat often: the scatter-add must add the repeats in order.
  const auto ids = random_ids(ctx, static_cast<size_t>(n), 0, id_range);
  std::vector<float> out_ref(static_cast<size_t>(n * channels));
  cpu::embedding_forward<float>(out_ref.data(), ids.data(), table.data(), n, vocab, channels);

  auto dtable_in = upload<T>(table);
  DeviceBuffer<int32_t> dids(ids);
  DeviceBuffer<T> out(out_ref.size());
  ctx.poison(out);
  dc::embedding_forward<T>(out.get(), dids.get(), dtable_in.get(), n, vocab, channels, ctx.stream);
  ctx.sync("embedding_forward");
  const auto got = download(out);
  ctx.compare("embedding_forward " + shape, to_double(got), to_double(out_ref), 1e-7);
  ctx.expect("embedding_forward exact " + shape, bits_equal(got, out_ref));

  const auto dout = inputs<T>(ctx, out_ref.size());
  auto dtable_ref = ctx.normal(static_cast<size_t>(vocab * channels));
  DeviceBuffer<float> dtable(dtable_ref);
  cpu::embedding_backward<float>(dtable_ref.data(), dout.data(), ids.data(), n, channels);
  auto ddout = upload<T>(dout);
  dc::embedding_backward<T>(dtable.get(), ddout.get(), dids.get(), n, vocab, channels, ctx.stream);
  ctx.sync("embedding_backward");
  const auto grad = dtable.download();
  ctx.compare("embedding_backward " + shape, to_double(grad), to_double(dtable_ref), 1e-6);
  ctx.expect("embedding_backward bit-identical " + shape, bits_equal(grad, dtable_ref),
             format("%zu values differ", bit_mismatches(grad, dtable_ref)));
}

}  // namespace

DJ_GPU_CHECK(ops_embedding) {
  check_embedding<float>(ctx, 1, 10, 8, 10);
  check_embedding<float>(ctx, 517, 1000, 64, 40);
  check_embedding<bf16>(ctx, 517, 1000, 64, 40);
  check_embedding<float>(ctx, 300, 50304, 37, 50304);
  check_embedding<bf16>(ctx, 300, 50304, 37, 50304);
  check_embedding<float>(ctx, 2048, 50304, 128, 2000);
}

// The 410M model's embedding of one micro-batch: 8192 tokens of a 50304 x 1024 table. Forward reads
// the ids and one table row per token and writes the rows; backward reads dout and adds each row
// into the fp32 gradient table (the floor counts the touched rows read and written once).
DJ_GPU_BENCH(ops_embedding) {
  const int64_t n = 8192, vocab = 50304, channels = 1024;
  const auto ids = random_ids(ctx, sz(n), 0, static_cast<int32_t>(vocab));
  DeviceBuffer<int32_t> dids(ids);
  DeviceBuffer<float> dtable(sz(vocab * channels));
  DJ_CUDA(cudaMemset(dtable.get(), 0, dtable.size() * sizeof(float)));
  auto run = [&](auto tag) {
    using T = decltype(tag);
    DeviceBuffer<T> table(sz(vocab * channels)), out(sz(n * channels));
    fill_random(ctx, table);
    const double ms = ctx.time_ms(
        [&] { dc::embedding_forward<T>(out.get(), dids.get(), table.get(), n, vocab, channels, ctx.stream); }, 20, 3);
    bench_row(ctx, format("embedding_forward %s 8192 of 50304x1024", type_name<T>()), ms, 0.0,
              2.0 * n * channels * sizeof(T) + 4.0 * n);
    const double ms_back = ctx.time_ms(
        [&] { dc::embedding_backward<T>(dtable.get(), out.get(), dids.get(), n, vocab, channels, ctx.stream); }, 20,
        3);
    bench_row(ctx, format("embedding_backward %s 8192 of 50304x1024", type_name<T>()), ms_back, 0.0,
              n * channels * (sizeof(T) + 8.0) + 4.0 * n);
  };
  run(bf16{});
  run(float{});
}

}  // namespace dj::gpucheck
