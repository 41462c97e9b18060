// Workbench of the matrix products (dc::Blas gemm, linear layers with their epilogues): its check against the CPU reference, its benchmark.
// Conventions: tests/gpu/check.h; shared helpers: check_support.h.
#include "tests/gpu/check_support.h"

namespace dj::gpucheck {
namespace {

// ---- references for products ---------------------------------------------------------------------

void ref_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
              const double* B, double beta, double* C) {
  cpu::gemm<double>(ta, tb, M, N, K, alpha, A, B, beta, C);
}
void ref_linear_forward(double* y, const double* x, const double* W, const double* b, int64_t rows,
                        int64_t in, int64_t out) {
  cpu::linear_forward<double>(y, x, W, b, rows, in, out);
}
void ref_linear_backward(double* dx, double* dW, double* db, const double* dy, const double* x,
                         const double* W, int64_t rows, int64_t in, int64_t out, bool accumulate_dx) {
  cpu::linear_backward<double>(dx, dW, db, dy, x, W, rows, in, out, accumulate_dx);
}

// ---- GEMM ---------------------------------------------------------------------------------------

template <typename TA, typename TC>
void check_gemm(Context& ctx, dc::Blas& blas, int64_t M, int64_t N, int64_t K, bool ta, bool tb,
                float beta) {
  const float alpha = 1.25f;
  const auto A = inputs<TA>(ctx, static_cast<size_t>(M * K));
  const auto B = inputs<TA>(ctx, static_cast<size_t>(K * N));
  const auto C0 = beta != 0.0f ? inputs<TC>(ctx, static_cast<size_t>(M * N))
                               : std::vector<float>(static_cast<size_t>(M * N), 0.0f);
  auto Ad = to_double(A), Bd = to_double(B), Cd = to_double(C0);
  ref_gemm(ta, tb, M, N, K, alpha, Ad.data(), Bd.data(), beta, Cd.data());

  auto dA = upload<TA>(A);
  auto dB = upload<TA>(B);
  DeviceBuffer<TC> dC(static_cast<size_t>(M * N));
  if (beta == 0.0f)
    ctx.poison(dC);
  else
    dC.upload(to_type<TC>(C0));
  dc::gemm<TA, TC>(blas, ta, tb, M, N, K, alpha, dA.get(), dB.get(), beta, dC.get(), ctx.stream);
  ctx.sync("gemm");
  const double threshold = kIsBf16<TC> ? 1e-2 : tolerance_f32_out<TA>();
  ctx.compare(format("gemm %s->%s %c%c %lldx%lldx%lld beta=%g", type_name<TA>(), type_name<TC>(),
                     ta ? 'T' : 'N', tb ? 'T' : 'N', static_cast<long long>(M),
                     static_cast<long long>(N), static_cast<long long>(K), beta),
              to_double(download(dC)), Cd, threshold);
}

template <typename TA, typename TC>
void check_gemm_all(Context& ctx, dc::Blas& blas) {
  const int64_t shapes[][3] = {{1, 1, 1}, {37, 53, 29}, {257, 130, 67}};
  int index = 0;
  for (const auto& s : shapes) {
    for (int t = 0; t < 4; ++t) {
      const float beta = (index++ % 2 == 1) ? 0.5f : 0.0f;
      check_gemm<TA, TC>(ctx, blas, s[0], s[1], s[2], (t & 1) != 0, (t & 2) != 0, beta);
    }
  }
  if (kEmulated)
    check_gemm<TA, TC>(ctx, blas, 128, 192, 256, false, true, 0.0f);
  else
    check_gemm<TA, TC>(ctx, blas, 512, 768, 1024, false, true, 0.0f);
}

// ---- Linear -------------------------------------------------------------------------------------

template <typename T>
void check_linear(Context& ctx, dc::Blas& blas, int64_t rows, int64_t in, int64_t out) {
  const std::string shape = format("%s %lldx%lld->%lld", type_name<T>(), static_cast<long long>(rows),
                                   static_cast<long long>(in), static_cast<long long>(out));
  const auto x = inputs<T>(ctx, static_cast<size_t>(rows * in));
  const auto W = inputs<T>(ctx, static_cast<size_t>(out * in), 1.0f / std::sqrt(float(in)));
  const auto b = inputs<T>(ctx, static_cast<size_t>(out), 0.5f);
  auto xd = to_double(x), Wd = to_double(W), bd = to_double(b);
  std::vector<double> y_ref(static_cast<size_t>(rows * out));
  ref_linear_forward(y_ref.data(), xd.data(), Wd.data(), bd.data(), rows, in, out);
  std::vector<double> gelu_ref(y_ref.size());
  cpu::gelu_forward<double>(gelu_ref.data(), y_ref.data(), static_cast<int64_t>(y_ref.size()),
                            cpu::GeluKind::Tanh);

  auto dx_in = upload<T>(x);
  auto dW = upload<T>(W);
  auto db = upload<T>(b);
  DeviceBuffer<T> y(y_ref.size()), pre(y_ref.size()), act(y_ref.size());
  ctx.poison(y);
  dc::linear_forward<T>(blas, y.get(), dx_in.get(), dW.get(), db.get(), rows, in, out, ctx.stream);
  ctx.sync("linear_forward");
  ctx.compare("linear_forward " + shape, to_double(download(y)), y_ref, tolerance<T>());

  // Fused bias + tanh GELU (the unfused fallback when out % 8 != 0), with and without `pre`.
  // cuBLASLt's GELU epilogue may evaluate tanh with a fast approximation: looser fp32 threshold.
  const double gelu_threshold = kIsBf16<T> ? 1e-2 : 1e-3;
  ctx.poison(pre);
  ctx.poison(act);
  dc::linear_forward_gelu_tanh<T>(blas, act.get(), pre.get(), dx_in.get(), dW.get(), db.get(), rows,
                                  in, out, ctx.stream);
  ctx.sync("linear_forward_gelu_tanh");
  const std::string path = out % 8 == 0 ? "fused unless cuBLASLt declines" : "unfused (out % 8)";
  ctx.compare("linear_gelu_tanh pre " + shape, to_double(download(pre)), y_ref, tolerance<T>(), path);
  ctx.compare("linear_gelu_tanh y " + shape, to_double(download(act)), gelu_ref, gelu_threshold, path);
  ctx.poison(act);
  dc::linear_forward_gelu_tanh<T>(blas, act.get(), nullptr, dx_in.get(), dW.get(), db.get(), rows,
                                  in, out, ctx.stream);
  ctx.sync("linear_forward_gelu_tanh (no pre)");
  ctx.compare("linear_gelu_tanh y (no pre) " + shape, to_double(download(act)), gelu_ref,
              gelu_threshold, "fused unless cuBLASLt declines");

  // Backward, accumulating into random dx, dW, db (and once more with a poisoned dx, overwritten).
  const auto dy = inputs<T>(ctx, static_cast<size_t>(rows * out));
  const auto dx0 = inputs<T>(ctx, static_cast<size_t>(rows * in));
  const auto dW0 = ctx.normal(static_cast<size_t>(out * in));
  const auto db0 = ctx.normal(static_cast<size_t>(out));
  auto dyd = to_double(dy);
  auto dx_ref = to_double(dx0), dW_ref = to_double(dW0), db_ref = to_double(db0);
  ref_linear_backward(dx_ref.data(), dW_ref.data(), db_ref.data(), dyd.data(), xd.data(),
                               Wd.data(), rows, in, out, true);
  std::vector<double> dx_fresh(dx_ref.size());
  ref_linear_backward(dx_fresh.data(), nullptr, nullptr, dyd.data(), xd.data(), Wd.data(),
                               rows, in, out, false);

  auto ddy = upload<T>(dy);
  auto ddx = upload<T>(dx0);
  DeviceBuffer<float> ddW(dW0), ddb(db0);
  dc::linear_backward<T>(blas, ddx.get(), ddW.get(), ddb.get(), ddy.get(), dx_in.get(), dW.get(),
                         rows, in, out, true, ctx.stream);
  ctx.sync("linear_backward");
  ctx.compare("linear_backward dx+= " + shape, to_double(download(ddx)), dx_ref, tolerance<T>());
  ctx.compare("linear_backward dW+= " + shape, to_double(ddW.download()), dW_ref,
              tolerance_f32_out<T>());
  ctx.compare("linear_backward db+= " + shape, to_double(ddb.download()), db_ref,
              tolerance_f32_out<T>());
  ctx.poison(ddx);
  dc::linear_backward<T>(blas, ddx.get(), nullptr, nullptr, ddy.get(), dx_in.get(), dW.get(), rows,
                         in, out, false, ctx.stream);
  ctx.sync("linear_backward (dx only)");
  ctx.compare("linear_backward dx= " + shape, to_double(download(ddx)), dx_fresh, tolerance<T>());
}

}  // namespace

DJ_GPU_CHECK(ops_gemm) {
  dc::Blas blas;
  check_gemm_all<float, float>(ctx, blas);
  check_gemm_all<bf16, float>(ctx, blas);
  check_gemm_all<bf16, bf16>(ctx, blas);
  // Informational: products cuBLASLt declined run on the plain fallback kernel (still checked above).
  ctx.expect("gemm fallback products", true,
             format("%lld of the products above used the fallback kernel",
                    static_cast<long long>(blas.fallback_products())));
}

DJ_GPU_CHECK(ops_linear) {
  dc::Blas blas;
  const int64_t shapes[][3] = {{1, 64, 48}, {37, 96, 130}, {128, 256, 384}};
  for (const auto& s : shapes) {
    check_linear<float>(ctx, blas, s[0], s[1], s[2]);
    check_linear<bf16>(ctx, blas, s[0], s[1], s[2]);
  }
  ctx.expect("linear fallback products", true,
             format("%lld products used the fallback kernel",
                    static_cast<long long>(blas.fallback_products())));
}

DJ_GPU_BENCH(ops_gemm) {
  dc::Blas blas;
  {
    const int64_t n = 4096;
    DeviceBuffer<bf16> A(sz(n * n)), B(sz(n * n)), C(sz(n * n));
    fill_random(ctx, A);
    fill_random(ctx, B);
    const double ms = ctx.time_ms([&] {
      dc::gemm<bf16, bf16>(blas, false, false, n, n, n, 1.0f, A.get(), B.get(), 0.0f, C.get(),
                           ctx.stream);
    }, 20, 3);
    bench_row(ctx, "gemm bf16 4096^3 NN", ms, 2.0 * n * n * n, 3.0 * n * n * 2);
  }
  // The 410M model: 8192 tokens, hidden 1024 -> QKV 3072, MLP 4096 and back.
  const int64_t tokens = 8192;
  const int64_t shapes[][2] = {{1024, 3072}, {1024, 4096}, {4096, 1024}};
  for (const auto& s : shapes) {
    const int64_t in = s[0], out = s[1];
    DeviceBuffer<bf16> x(sz(tokens * in)), W(sz(out * in)), b(sz(out)),
        y(sz(tokens * out));
    fill_random(ctx, x);
    fill_random(ctx, W, 0.03f);
    fill_random(ctx, b);
    const double flops = 2.0 * tokens * in * out;
    const double bytes = 2.0 * (tokens * in + out * in + tokens * out);
    const double ms = ctx.time_ms([&] {
      dc::linear_forward<bf16>(blas, y.get(), x.get(), W.get(), b.get(), tokens, in, out, ctx.stream);
    }, 20, 3);
    bench_row(ctx, format("linear+bias bf16 %lldx%lld->%lld", static_cast<long long>(tokens),
                          static_cast<long long>(in), static_cast<long long>(out)),
              ms, flops, bytes);
    if (out == 4096) {
      DeviceBuffer<bf16> pre(sz(tokens * out));
      const double ms_gelu = ctx.time_ms([&] {
        dc::linear_forward_gelu_tanh<bf16>(blas, y.get(), pre.get(), x.get(), W.get(), b.get(),
                                           tokens, in, out, ctx.stream);
      }, 20, 3);
      bench_row(ctx, format("linear+bias+gelu_tanh(aux) bf16 %lldx%lld->%lld",
                            static_cast<long long>(tokens), static_cast<long long>(in),
                            static_cast<long long>(out)),
                ms_gelu, flops, bytes + 2.0 * tokens * out);
      // dW += dy^T x with fp32 accumulation (bf16 operands).
      DeviceBuffer<float> dW(sz(out * in));
      DJ_CUDA(cudaMemset(dW.get(), 0, dW.size() * sizeof(float)));
      const double ms_dw = ctx.time_ms([&] {
        dc::gemm<bf16, float>(blas, true, false, out, in, tokens, 1.0f, y.get(), x.get(), 1.0f,
                              dW.get(), ctx.stream);
      }, 20, 3);
      bench_row(ctx, "dW+= bf16->f32 4096x1024 (K=8192)", ms_dw, flops,
                2.0 * (tokens * in + tokens * out) + 8.0 * out * in);
    }
  }
}

}  // namespace dj::gpucheck
