// The emulation's library models: cuBLASLt products and epilogues against a naive product in
// double, the heuristic's refusals, and cuFFT's C2R against a direct transform.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <cufft.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "support.h"

namespace {

using dj::emu::test::Device;

struct Problem {
  cudaDataType_t ab = CUDA_R_32F, d = CUDA_R_32F;
  bool ta = false, tb = false;
  int64_t m = 0, n = 0, k = 0;
  float alpha = 1.0f, beta = 0.0f;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  int64_t aux_ld = 0;
};

double gelu_tanh(double x) { return 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x))); }

float round_to(cudaDataType_t type, float v) { return type == CUDA_R_16BF ? __bfloat162float(__float2bfloat16_rn(v)) : v; }

template <typename T>
std::vector<T> as(const std::vector<float>& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = static_cast<T>(v[i]);
  return out;
}

struct Result {
  cublasStatus_t heuristic = CUBLAS_STATUS_SUCCESS;
  int algos = 0;
  double error = 0, aux_error = 0;
};

template <typename TAB, typename TD>
Result run(const Problem& p) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  const cudaDataType_t ab = p.ab, dt = p.d;
  // Column-major: op(A) m x k, op(B) k x n.
  const int64_t a_rows = p.ta ? p.k : p.m, a_cols = p.ta ? p.m : p.k;
  const int64_t b_rows = p.tb ? p.n : p.k, b_cols = p.tb ? p.k : p.n;
  std::vector<float> A(static_cast<size_t>(a_rows * a_cols)), B(static_cast<size_t>(b_rows * b_cols)),
      C(static_cast<size_t>(p.m * p.n)), bias(static_cast<size_t>(p.m));
  for (auto* v : {&A, &B})
    for (float& x : *v) x = round_to(ab, normal(rng));
  for (auto* v : {&C, &bias})
    for (float& x : *v) x = round_to(dt, normal(rng));
  Device<TAB> dA(as<TAB>(A)), dB(as<TAB>(B));
  Device<TD> dC(as<TD>(C)), dbias(as<TD>(bias));
  const int64_t aux_ld = p.aux_ld > 0 ? p.aux_ld : p.m;
  Device<TD> daux(std::vector<TD>(static_cast<size_t>(aux_ld * p.n), TD(0.0f)));

  cublasLtHandle_t handle = nullptr;
  cublasLtCreate(&handle);
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  const int32_t ta = p.ta ? CUBLAS_OP_T : CUBLAS_OP_N, tb = p.tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta);
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb);
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &p.epilogue, sizeof p.epilogue);
  const void* bias_ptr = dbias.get();
  void* aux_ptr = daux.get();
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof bias_ptr);
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux_ptr, sizeof aux_ptr);
  cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &aux_ld, sizeof aux_ld);
  cublasLtMatrixLayout_t la = nullptr, lb = nullptr, lc = nullptr;
  cublasLtMatrixLayoutCreate(&la, ab, static_cast<uint64_t>(a_rows), static_cast<uint64_t>(a_cols), a_rows);
  cublasLtMatrixLayoutCreate(&lb, ab, static_cast<uint64_t>(b_rows), static_cast<uint64_t>(b_cols), b_rows);
  cublasLtMatrixLayoutCreate(&lc, dt, static_cast<uint64_t>(p.m), static_cast<uint64_t>(p.n), p.m);
  cublasLtMatmulPreference_t pref = nullptr;
  cublasLtMatmulPreferenceCreate(&pref);
  cublasLtMatmulHeuristicResult_t heuristic{};
  Result r;
  r.heuristic = cublasLtMatmulAlgoGetHeuristic(handle, desc, la, lb, lc, lc, pref, 1, &heuristic, &r.algos);
  if (r.algos > 0) {
    EXPECT_EQ(cublasLtMatmul(handle, desc, &p.alpha, dA.get(), la, dB.get(), lb, &p.beta, dC.get(), lc, dC.get(), lc,
                             &heuristic.algo, nullptr, 0, nullptr),
              CUBLAS_STATUS_SUCCESS);
    const std::vector<TD> D = dC.download(), aux = daux.download();
    const bool bias_on = p.epilogue == CUBLASLT_EPILOGUE_BIAS || p.epilogue == CUBLASLT_EPILOGUE_GELU_BIAS ||
                         p.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    const bool gelu_on = p.epilogue != CUBLASLT_EPILOGUE_DEFAULT && p.epilogue != CUBLASLT_EPILOGUE_BIAS;
    const bool aux_on = p.epilogue == CUBLASLT_EPILOGUE_GELU_AUX || p.epilogue == CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
    double diff = 0, norm = 0, aux_diff = 0, aux_norm = 0;
    for (int64_t j = 0; j < p.n; ++j)
      for (int64_t i = 0; i < p.m; ++i) {
        double acc = 0;
        for (int64_t q = 0; q < p.k; ++q) {
          const double a = p.ta ? A[static_cast<size_t>(q + i * a_rows)] : A[static_cast<size_t>(i + q * a_rows)];
          const double b = p.tb ? B[static_cast<size_t>(j + q * b_rows)] : B[static_cast<size_t>(q + j * b_rows)];
          acc += a * b;
        }
        double pre = p.alpha * acc + p.beta * C[static_cast<size_t>(i + j * p.m)];
        if (bias_on) pre += bias[static_cast<size_t>(i)];
        const double expected = gelu_on ? gelu_tanh(pre) : pre;
        const double got = static_cast<float>(D[static_cast<size_t>(i + j * p.m)]);
        diff += (got - expected) * (got - expected);
        norm += expected * expected;
        if (aux_on) {
          const double a = static_cast<float>(aux[static_cast<size_t>(i + j * aux_ld)]);
          aux_diff += (a - pre) * (a - pre);
          aux_norm += pre * pre;
        }
      }
    r.error = std::sqrt(diff / norm);
    r.aux_error = aux_on ? std::sqrt(aux_diff / aux_norm) : 0.0;
  }
  cublasLtMatmulPreferenceDestroy(pref);
  cublasLtMatrixLayoutDestroy(la);
  cublasLtMatrixLayoutDestroy(lb);
  cublasLtMatrixLayoutDestroy(lc);
  cublasLtMatmulDescDestroy(desc);
  cublasLtDestroy(handle);
  return r;
}

TEST(CublasLt, ProductsAndEpiloguesMatchANaiveProduct) {
  const cublasLtEpilogue_t epilogues[] = {CUBLASLT_EPILOGUE_DEFAULT, CUBLASLT_EPILOGUE_BIAS, CUBLASLT_EPILOGUE_GELU,
                                          CUBLASLT_EPILOGUE_GELU_BIAS, CUBLASLT_EPILOGUE_GELU_AUX,
                                          CUBLASLT_EPILOGUE_GELU_AUX_BIAS};
  for (const cublasLtEpilogue_t e : epilogues)
    for (int t = 0; t < 4; ++t) {
      Problem p;
      p.m = 24;
      p.n = 13;
      p.k = 37;
      p.ta = (t & 1) != 0;
      p.tb = (t & 2) != 0;
      p.alpha = 1.5f;
      p.beta = e == CUBLASLT_EPILOGUE_DEFAULT ? 0.5f : 0.0f;
      p.epilogue = e;
      const Result f = run<float, float>(p);
      ASSERT_EQ(f.algos, 1) << "epilogue " << e;
      EXPECT_LT(f.error, 1e-6) << "fp32 epilogue " << e << " transposes " << t;
      EXPECT_LT(f.aux_error, 1e-6);
      p.ab = CUDA_R_16BF;
      p.d = CUDA_R_16BF;
      const Result b = run<__nv_bfloat16, __nv_bfloat16>(p);
      ASSERT_EQ(b.algos, 1);
      EXPECT_LT(b.error, 1e-2) << "bf16 epilogue " << e << " transposes " << t;
      EXPECT_LT(b.aux_error, 1e-2);
      p.d = CUDA_R_32F;
      const Result bf = run<__nv_bfloat16, float>(p);
      ASSERT_EQ(bf.algos, 1);
      EXPECT_LT(bf.error, 1e-6) << "bf16 -> fp32 epilogue " << e << " transposes " << t;
    }
}

TEST(CublasLt, HeuristicRefusesWhatTheLibraryRefuses) {
  Problem p;
  p.m = 12;  // GELU_AUX wants the aux leading dimension a multiple of 8
  p.n = 5;
  p.k = 7;
  p.epilogue = CUBLASLT_EPILOGUE_GELU_AUX_BIAS;
  p.aux_ld = 12;
  Result r = run<float, float>(p);
  EXPECT_EQ(r.algos, 0);
  EXPECT_EQ(r.heuristic, CUBLAS_STATUS_NOT_SUPPORTED);
  p.aux_ld = 16;
  r = run<float, float>(p);
  EXPECT_EQ(r.algos, 1);
  EXPECT_LT(r.aux_error, 1e-6);
  EXPECT_STREQ(cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED), "CUBLAS_STATUS_NOT_SUPPORTED");
}

TEST(Cufft, C2RMatchesADirectTransform) {
  for (const int n : {8, 20, 64, 7}) {
    const int h = n / 2 + 1, batch = 3;
    std::mt19937 rng(static_cast<unsigned>(n));
    std::normal_distribution<float> normal;
    std::vector<float2> spectrum(static_cast<size_t>(batch * h));
    for (float2& x : spectrum) x = make_float2(normal(rng), normal(rng));
    Device<float2> in(spectrum);
    Device<float> out(std::vector<float>(static_cast<size_t>(batch * n), 0.0f));
    int dims[1] = {n}, inembed[1] = {h}, onembed[1] = {n};
    cufftHandle plan = 0;
    ASSERT_EQ(cufftPlanMany(&plan, 1, dims, inembed, 1, h, onembed, 1, n, CUFFT_C2R, batch), CUFFT_SUCCESS);
    ASSERT_EQ(cufftSetStream(plan, nullptr), CUFFT_SUCCESS);
    size_t work = 1;
    ASSERT_EQ(cufftGetSize(plan, &work), CUFFT_SUCCESS);
    ASSERT_EQ(cufftExecC2R(plan, in.get(), out.get()), CUFFT_SUCCESS);
    const std::vector<float> got = out.download();
    for (int b = 0; b < batch; ++b)
      for (int t = 0; t < n; ++t) {
        // The Hermitian extension X_{n-k} = conj(X_k); the imaginary parts of X_0 and X_{n/2} drop out.
        double v = 0;
        for (int k = 0; k < n; ++k) {
          const int kk = k < h ? k : n - k;
          const float2 x = spectrum[static_cast<size_t>(b * h + kk)];
          double re = x.x, im = k < h ? x.y : -x.y;
          if (k == 0 || 2 * k == n) im = 0;
          const double angle = 2 * 3.14159265358979323846 * k * t / n;
          v += re * std::cos(angle) - im * std::sin(angle);
        }
        EXPECT_NEAR(got[static_cast<size_t>(b * n + t)], v, 1e-5 * (1 + std::fabs(v))) << n << " " << b << " " << t;
      }
    EXPECT_EQ(cufftDestroy(plan), CUFFT_SUCCESS);
  }
}

}  // namespace
