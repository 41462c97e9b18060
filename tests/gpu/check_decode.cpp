// Device checks of the decoding kernels (kernels/cuda/decode.h) against the CPU's
// (kernels/cpu/decode.h): the teacher's attention of one new token over a key/value cache, and the
// strided row copies that fill the cache. bf16 inputs are compared with the CPU op on the same
// bf16-rounded values in fp64, so only the kernel's own rounding counts (threshold 1e-2; fp32 1e-5).
// Shapes: len 1 (the first token), a partial tile, several 64-key tiles, len = capacity, head sizes
// 32..256 (one and two output columns per thread), a single row.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/core/dtype.h"
#include "kernels/cpu/decode.h"
#include "kernels/cuda/decode.h"
#include "tests/gpu/check_attention_support.h"

namespace {

using namespace dj::gpucheck::attention_check;

template <typename T>
void check_cached_attention(Context& ctx, int64_t BH, int64_t len, int64_t capacity, int64_t d) {
  const std::string dims = std::string(type_name<T>()) + " BH=" + std::to_string(BH) + " len=" + std::to_string(len) +
                           " capacity=" + std::to_string(capacity) + " d=" + std::to_string(d);
  const size_t cache = static_cast<size_t>(BH * capacity * d), rows = static_cast<size_t>(BH * d);
  const std::vector<float> q = representable<T>(ctx.normal(rows));
  const std::vector<float> k = representable<T>(ctx.normal(cache));
  const std::vector<float> v = representable<T>(ctx.normal(cache));
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  auto q_dev = upload<T>(q);
  auto k_dev = upload<T>(k);
  auto v_dev = upload<T>(v);
  DeviceBuffer<Store<T>> o_dev(rows);
  ctx.poison(o_dev);
  dj::cuda::cached_attention_step<T>(dptr<T>(o_dev), dptr<T>(q_dev), dptr<T>(k_dev), dptr<T>(v_dev), BH, len,
                                     capacity, d, scale, ctx.stream);
  ctx.sync("cached_attention_step");
  std::vector<double> expected(rows);
  dj::cpu::cached_attention_step<double>(expected.data(), to_double(q).data(), to_double(k).data(),
                                         to_double(v).data(), BH, len, capacity, d, scale);
  ctx.compare("cached_attention_step " + dims, download<T>(o_dev), expected, threshold<T>());
}

template <typename T>
void check_copy_rows(Context& ctx, int64_t rows, int64_t width, int64_t src_stride, int64_t dst_stride) {
  const std::vector<float> src = representable<T>(ctx.normal(static_cast<size_t>(rows * src_stride)));
  const std::vector<float> dst0 = representable<T>(ctx.normal(static_cast<size_t>(rows * dst_stride)));
  auto src_dev = upload<T>(src);
  auto dst_dev = upload<T>(dst0);
  dj::cuda::copy_rows<T>(dptr<T>(dst_dev), dst_stride, dptr<T>(src_dev), src_stride, rows, width, ctx.stream);
  ctx.sync("copy_rows");
  std::vector<double> expected = to_double(dst0);
  const std::vector<double> src_d = to_double(src);
  dj::cpu::copy_rows<double>(expected.data(), dst_stride, src_d.data(), src_stride, rows, width);
  const std::vector<double> got = download<T>(dst_dev);
  ctx.expect(std::string("copy_rows ") + type_name<T>() + " rows=" + std::to_string(rows) +
                 " width=" + std::to_string(width),
             got == expected, "exact, rows beyond the width untouched");
}

DJ_GPU_CHECK(decode_cached_attention) {
  const int64_t shapes[][4] = {{3, 1, 5, 64},   {4, 37, 40, 64},  {2, 130, 130, 128}, {1, 65, 300, 80},
                               {2, 64, 64, 32}, {2, 70, 96, 256}, {1, 3, 8, 300}};
  for (const auto& s : shapes) {
    if (dj::gpucheck::kEmulated && s[1] > 70) continue;  // keeps the emulated run short; the tiles are covered
    check_cached_attention<float>(ctx, s[0], s[1], s[2], s[3]);
    check_cached_attention<bf16>(ctx, s[0], s[1], s[2], s[3]);
  }
  if (!dj::gpucheck::kEmulated) {
    check_cached_attention<float>(ctx, 16, 4096, 4096, 64);
    check_cached_attention<bf16>(ctx, 16, 4096, 4100, 128);
  }
}

DJ_GPU_CHECK(decode_copy_rows) {
  check_copy_rows<float>(ctx, 6, 64, 64, 640);
  check_copy_rows<bf16>(ctx, 6, 128, 128, 1280);
  check_copy_rows<float>(ctx, 5, 7, 9, 11);
  check_copy_rows<bf16>(ctx, 1, 3, 3, 3);
}

}  // namespace
