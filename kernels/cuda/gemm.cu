// Matrix products through cuBLASLt: row-major gemm, Linear forward (bias / bias+GELU epilogues) and
// backward.
//
// Row-major <-> column-major mapping. cuBLASLt is column-major; a row-major matrix X [r, c] with
// leading dimension c is, read column-major, X^T [c, r] with the same leading dimension. The
// row-major product C = op(A) op(B) ([M,K] x [K,N]) is therefore computed as its transpose
//     C^T [N, M] = op(B)^T [N, K] * op(A)^T [K, M]          (column-major)
// i.e. cuBLASLt's first operand is our B and its second our A, with m = N, n = M, k = K:
//   - first operand (our B): stored row-major [K, N] (ld N) when !trans_b — column-major that is
//     [N, K] with ld N, already op(B)^T, so CUBLAS_OP_N; stored [N, K] (ld K) when trans_b —
//     column-major [K, N] with ld K, transposed by CUBLAS_OP_T.
//     Layout: rows = trans_b ? K : N, cols = trans_b ? N : K, ld = rows.
//   - second operand (our A): stored [M, K] (ld K) when !trans_a — column-major [K, M], OP_N;
//     stored [K, M] (ld M) when trans_a — column-major [M, K], OP_T.
//     Layout: rows = trans_a ? M : K, cols = trans_a ? K : M, ld = rows.
//   - C and D: column-major [N, M] with ld N, which is exactly row-major C [M, N].
// Epilogue bias vectors have "one value per row of D" = N values: with the mapping above that is
// one value per column of the row-major output, i.e. per output feature of a Linear layer, which is
// what y = x W^T + b needs. (The GELU epilogue's auxiliary pre-activation matrix is laid out like D:
// leading dimension N = out, which cuBLASLt wants divisible by 8.)
//
// Types: compute CUBLAS_COMPUTE_32F with fp32 alpha/beta for every combination, so fp32 products
// are true fp32 (no TF32) and bf16 products accumulate in fp32 on the tensor cores; (A, B, C) =
// (f32, f32, f32), (bf16, bf16, f32) and (bf16, bf16, bf16). The algorithm comes from cuBLASLt's
// heuristic (one result, the workspace of the Blas handle), told the true alignment of every
// pointer (up to 256 bytes) so that it never picks a kernel that assumes more; the choice is cached
// per (types, transposes, shape, epilogue, alignments). When cuBLASLt offers no algorithm, a plain
// product uses gemm_fallback_kernel (counted in Blas::fallback_products()), a bias epilogue falls
// back to "seed y with b, then beta = 1" (the CPU op's own method), and the GELU epilogue to the
// product followed by gelu_forward(Tanh).
//
// Cost at the 410M model's shapes (bf16, 8192 tokens): 1024 -> 3072 is 51.5 GFLOP, 1024 -> 4096
// 68.7 GFLOP: ~65 / ~87 us at the ~790 TFLOP/s measured for large bf16 products on an H200 here;
// the three operands (73 / 92 MB) move in ~17 / ~21 us at 4.3 TB/s, so these are matrix-bound.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

using CacheKey = std::array<int64_t, 16>;

struct Blas::Cache {
  // For each problem key: whether the heuristic found an algorithm, and that algorithm.
  std::map<CacheKey, std::pair<bool, cublasLtMatmulAlgo_t>> algos;
  int64_t fallbacks = 0;  // products cuBLASLt declined, done by gemm_fallback_kernel instead
};

int64_t Blas::fallback_products() const { return cache_->fallbacks; }

namespace {

void check_blas(cublasStatus_t status, const char* call) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string(call) + ": " + cublasLtGetStatusString(status));
}
#define DJ_CUBLASLT_CHECK(call) check_blas((call), #call)

template <typename T>
constexpr cudaDataType_t data_type();
template <>
constexpr cudaDataType_t data_type<float>() {
  return CUDA_R_32F;
}
template <>
constexpr cudaDataType_t data_type<__nv_bfloat16>() {
  return CUDA_R_16BF;
}

// Largest power of two up to 256 that divides the address (256 for null: nothing to constrain).
uint32_t alignment_of(const void* p) {
  const auto address = reinterpret_cast<uintptr_t>(p);
  if (address == 0) return 256;
  uint32_t alignment = 1;
  while (alignment < 256 && address % (2u * alignment) == 0) alignment *= 2;
  return alignment;
}

struct MatmulDesc {
  cublasLtMatmulDesc_t handle = nullptr;
  ~MatmulDesc() {
    if (handle != nullptr) cublasLtMatmulDescDestroy(handle);
  }
  template <typename V>
  void set(cublasLtMatmulDescAttributes_t attribute, const V& value) {
    DJ_CUBLASLT_CHECK(cublasLtMatmulDescSetAttribute(handle, attribute, &value, sizeof(value)));
  }
};

struct Layout {
  cublasLtMatrixLayout_t handle = nullptr;
  Layout(cudaDataType_t type, uint64_t rows, uint64_t cols, int64_t ld) {
    DJ_CUBLASLT_CHECK(cublasLtMatrixLayoutCreate(&handle, type, rows, cols, ld));
  }
  ~Layout() {
    if (handle != nullptr) cublasLtMatrixLayoutDestroy(handle);
  }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

struct Preference {
  cublasLtMatmulPreference_t handle = nullptr;
  Preference() { DJ_CUBLASLT_CHECK(cublasLtMatmulPreferenceCreate(&handle)); }
  ~Preference() {
    if (handle != nullptr) cublasLtMatmulPreferenceDestroy(handle);
  }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  template <typename V>
  void set(cublasLtMatmulPreferenceAttributes_t attribute, const V& value) {
    DJ_CUBLASLT_CHECK(
        cublasLtMatmulPreferenceSetAttribute(handle, attribute, &value, sizeof(value)));
  }
};

// One row-major product C = alpha op(A) op(B) + beta C with an optional epilogue.
struct Problem {
  cudaDataType_t ab_type = CUDA_R_32F;
  cudaDataType_t c_type = CUDA_R_32F;
  bool trans_a = false;
  bool trans_b = false;
  int64_t M = 0, N = 0, K = 0;
  float alpha = 1.0f;
  float beta = 0.0f;
  const void* A = nullptr;
  const void* B = nullptr;
  void* C = nullptr;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // [N], type of C
  void* aux = nullptr;         // GELU pre-activation, laid out like C (ld = aux_ld)
  int64_t aux_ld = 0;
};

// Runs the product; returns false instead of throwing when allow_fail and cuBLASLt offers no
// algorithm for it (unsupported epilogue/type/shape combination).
bool run_matmul(Blas& blas, const Problem& pr, cudaStream_t stream, bool allow_fail) {
  const cublasOperation_t op_first = pr.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;   // on our B
  const cublasOperation_t op_second = pr.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;  // on our A
  const int64_t first_rows = pr.trans_b ? pr.K : pr.N;
  const int64_t first_cols = pr.trans_b ? pr.N : pr.K;
  const int64_t second_rows = pr.trans_a ? pr.M : pr.K;
  const int64_t second_cols = pr.trans_a ? pr.K : pr.M;

  MatmulDesc desc;
  DJ_CUBLASLT_CHECK(cublasLtMatmulDescCreate(&desc.handle, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  desc.set(CUBLASLT_MATMUL_DESC_TRANSA, static_cast<int32_t>(op_first));
  desc.set(CUBLASLT_MATMUL_DESC_TRANSB, static_cast<int32_t>(op_second));
  if (pr.epilogue != CUBLASLT_EPILOGUE_DEFAULT) {
    desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE, pr.epilogue);
    if (pr.bias != nullptr) desc.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, pr.bias);
    if (pr.aux != nullptr) {
      desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, pr.aux);
      desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, pr.aux_ld);
    }
  }
  const Layout first(pr.ab_type, static_cast<uint64_t>(first_rows),
                     static_cast<uint64_t>(first_cols), first_rows);
  const Layout second(pr.ab_type, static_cast<uint64_t>(second_rows),
                      static_cast<uint64_t>(second_cols), second_rows);
  const Layout out(pr.c_type, static_cast<uint64_t>(pr.N), static_cast<uint64_t>(pr.M), pr.N);

  const uint32_t align_first = alignment_of(pr.B);
  const uint32_t align_second = alignment_of(pr.A);
  const uint32_t align_out = alignment_of(pr.C);
  const CacheKey key{static_cast<int64_t>(pr.ab_type),
                     static_cast<int64_t>(pr.c_type),
                     pr.trans_a ? 1 : 0,
                     pr.trans_b ? 1 : 0,
                     pr.M,
                     pr.N,
                     pr.K,
                     static_cast<int64_t>(pr.epilogue),
                     align_first,
                     align_second,
                     align_out,
                     pr.bias != nullptr ? static_cast<int64_t>(alignment_of(pr.bias)) : 0,
                     pr.aux != nullptr ? static_cast<int64_t>(alignment_of(pr.aux)) : 0,
                     pr.aux_ld,
                     static_cast<int64_t>(blas.workspace_bytes()),
                     0};
  auto& algos = blas.cache().algos;
  auto found = algos.find(key);
  if (found == algos.end()) {
    Preference preference;
    preference.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                   static_cast<uint64_t>(blas.workspace_bytes()));
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_first);
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_second);
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_out);
    preference.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_out);
    cublasLtMatmulHeuristicResult_t result{};
    int count = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(blas.handle(), desc.handle, first.handle, second.handle,
                                       out.handle, out.handle, preference.handle, 1, &result, &count);
    const bool ok = status == CUBLAS_STATUS_SUCCESS && count > 0;
    found = algos.emplace(key, std::make_pair(ok, result.algo)).first;
  }
  if (!found->second.first) {
    if (allow_fail) return false;
    throw std::runtime_error("cuBLASLt: no algorithm for a " + std::to_string(pr.M) + "x" +
                             std::to_string(pr.N) + "x" + std::to_string(pr.K) +
                             " product (types " + std::to_string(pr.ab_type) + "/" +
                             std::to_string(pr.c_type) + ", epilogue " +
                             std::to_string(static_cast<int>(pr.epilogue)) + ")");
  }
  DJ_CUBLASLT_CHECK(cublasLtMatmul(blas.handle(), desc.handle, &pr.alpha, pr.B, first.handle, pr.A,
                                   second.handle, &pr.beta, pr.C, out.handle, pr.C, out.handle,
                                   &found->second.second, blas.workspace(), blas.workspace_bytes(),
                                   stream));
  return true;
}

// C = beta * C (K == 0); beta == 0 writes zeros without reading C.
template <typename T>
__global__ void __launch_bounds__(256) scale_matrix_kernel(T* c, int64_t n, float beta) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    c[i] = detail::from_f32<T>(beta == 0.0f ? 0.0f : beta * detail::to_f32(c[i]));
}

// y[r, :] = b (or 0 when b is null): a Linear layer with no inputs.
template <typename T>
__global__ void __launch_bounds__(256)
    broadcast_bias_kernel(T* y, const T* b, int64_t rows, int64_t out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * out;
       i += stride)
    y[i] = b != nullptr ? b[i % out] : detail::from_f32<T>(0.0f);
}

// Plain tiled product for the (rare) problems cuBLASLt offers no algorithm for: 16 x 16 output
// tile per block, 16-wide K slices staged in shared memory (padded rows: no bank conflicts on the
// column reads), fp32 accumulation in K order. Correct for any shape, transposes and alignment;
// slow (CUDA cores, no tensor cores), so it is only a safety net.
constexpr int kFallbackTile = 16;

template <typename TA, typename TC>
__global__ void __launch_bounds__(kFallbackTile * kFallbackTile)
    gemm_fallback_kernel(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
                         const TA* A, const TA* B, float beta, TC* C) {
  __shared__ float tile_a[kFallbackTile][kFallbackTile + 1];
  __shared__ float tile_b[kFallbackTile][kFallbackTile + 1];
  const int tx = threadIdx.x;
  const int ty = threadIdx.y;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kFallbackTile + ty;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kFallbackTile + tx;
  float acc = 0.0f;
  // Uniform trip count: the barriers are reached by every thread of the block.
  for (int64_t k0 = 0; k0 < K; k0 += kFallbackTile) {
    const int64_t ka = k0 + tx;  // op(A)[row, ka]
    tile_a[ty][tx] = row < M && ka < K
                         ? detail::to_f32(trans_a ? A[ka * M + row] : A[row * K + ka])
                         : 0.0f;
    const int64_t kb = k0 + ty;  // op(B)[kb, col]
    tile_b[ty][tx] = kb < K && col < N
                         ? detail::to_f32(trans_b ? B[col * K + kb] : B[kb * N + col])
                         : 0.0f;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kFallbackTile; ++k) acc += tile_a[ty][k] * tile_b[k][tx];
    __syncthreads();
  }
  if (row < M && col < N) {
    float value = alpha * acc;
    if (beta != 0.0f) value += beta * detail::to_f32(C[row * N + col]);
    C[row * N + col] = detail::from_f32<TC>(value);
  }
}

template <typename TA, typename TC>
void gemm_fallback(Blas& blas, const Problem& pr, cudaStream_t stream) {
  const int64_t grid_x = (pr.N + kFallbackTile - 1) / kFallbackTile;
  const int64_t grid_y = (pr.M + kFallbackTile - 1) / kFallbackTile;
  if (grid_x > 0x7fffffff || grid_y > 65535)
    throw std::runtime_error("gemm: cuBLASLt declined the product and it is too large for the "
                             "fallback kernel");
  launch("gemm_fallback_kernel", gemm_fallback_kernel<TA, TC>,
         dim3(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y)),
         dim3(kFallbackTile, kFallbackTile), 0, stream, pr.trans_a, pr.trans_b, pr.M, pr.N, pr.K,
         pr.alpha, static_cast<const TA*>(pr.A), static_cast<const TA*>(pr.B), pr.beta,
         static_cast<TC*>(pr.C));
  ++blas.cache().fallbacks;
}

template <typename T>
Problem linear_problem(T* y, const T* x, const T* W, int64_t rows, int64_t in, int64_t out) {
  // y [rows, out] = x [rows, in] * W[out, in]^T: M = rows, N = out, K = in, B = W transposed.
  Problem pr;
  pr.ab_type = data_type<T>();
  pr.c_type = data_type<T>();
  pr.trans_a = false;
  pr.trans_b = true;
  pr.M = rows;
  pr.N = out;
  pr.K = in;
  pr.A = x;
  pr.B = W;
  pr.C = y;
  return pr;
}

}  // namespace

Blas::Blas(size_t workspace_bytes) : workspace_bytes_(workspace_bytes) {
  DJ_CUBLASLT_CHECK(cublasLtCreate(&handle_));
  if (workspace_bytes_ > 0) {
    const cudaError_t status = cudaMalloc(&workspace_, workspace_bytes_);
    if (status != cudaSuccess) {
      cublasLtDestroy(handle_);
      handle_ = nullptr;
      check(status, "cudaMalloc(cuBLASLt workspace)");
    }
  }
  cache_ = new Cache();
}

Blas::~Blas() {
  delete cache_;
  if (workspace_ != nullptr) cudaFree(workspace_);
  if (handle_ != nullptr) cublasLtDestroy(handle_);
}

template <typename TA, typename TC>
void gemm(Blas& blas, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const TA* A, const TA* B, float beta, TC* C, cudaStream_t stream) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("gemm: negative dimension");
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (beta == 1.0f) return;
    launch("scale_matrix_kernel", scale_matrix_kernel<TC>, detail::grid_for(M * N, 256), 256, 0, stream,
           C, M * N, beta);
    return;
  }
  Problem pr;
  pr.ab_type = data_type<TA>();
  pr.c_type = data_type<TC>();
  pr.trans_a = trans_a;
  pr.trans_b = trans_b;
  pr.M = M;
  pr.N = N;
  pr.K = K;
  pr.alpha = alpha;
  pr.beta = beta;
  pr.A = A;
  pr.B = B;
  pr.C = C;
  if (!run_matmul(blas, pr, stream, true)) gemm_fallback<TA, TC>(blas, pr, stream);
}

template <typename T>
void linear_forward(Blas& blas, T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in,
                    int64_t out, cudaStream_t stream) {
  if (rows < 0 || in < 0 || out < 0) throw std::invalid_argument("linear_forward: negative size");
  if (rows == 0 || out == 0) return;
  if (in == 0) {
    launch("broadcast_bias_kernel", broadcast_bias_kernel<T>, detail::grid_for(rows * out, 256), 256, 0,
           stream, y, b, rows, out);
    return;
  }
  Problem pr = linear_problem(y, x, W, rows, in, out);
  if (b != nullptr) {
    pr.epilogue = CUBLASLT_EPILOGUE_BIAS;
    pr.bias = b;
  }
  if (run_matmul(blas, pr, stream, true)) return;
  // No algorithm with the bias epilogue: seed y with the bias and accumulate the product onto it
  // (beta = 1), as the CPU op does.
  if (b != nullptr)
    launch("broadcast_bias_kernel", broadcast_bias_kernel<T>, detail::grid_for(rows * out, 256), 256, 0,
           stream, y, b, rows, out);
  gemm<T, T>(blas, false, true, rows, out, in, 1.0f, x, W, b != nullptr ? 1.0f : 0.0f, y, stream);
}

template <typename T>
void linear_forward_gelu_tanh(Blas& blas, T* y, T* pre, const T* x, const T* W, const T* b,
                              int64_t rows, int64_t in, int64_t out, cudaStream_t stream) {
  if (rows < 0 || in < 0 || out < 0)
    throw std::invalid_argument("linear_forward_gelu_tanh: negative size");
  if (rows == 0 || out == 0) return;
  if (in > 0 && (pre == nullptr || out % 8 == 0)) {
    Problem pr = linear_problem(y, x, W, rows, in, out);
    if (pre != nullptr) {
      pr.epilogue = b != nullptr ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      pr.aux = pre;
      pr.aux_ld = out;
    } else {
      pr.epilogue = b != nullptr ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    }
    pr.bias = b;
    if (run_matmul(blas, pr, stream, true)) return;
  }
  // Unfused: the pre-activation (into `pre`, or into y itself), then the tanh GELU.
  T* z = pre != nullptr ? pre : y;
  linear_forward(blas, z, x, W, b, rows, in, out, stream);
  gelu_forward(y, z, rows * out, GeluKind::Tanh, stream);
}

template <typename T>
void linear_backward(Blas& blas, T* dx, float* dW, float* db, const T* dy, const T* x, const T* W,
                     int64_t rows, int64_t in, int64_t out, bool accumulate_dx,
                     cudaStream_t stream) {
  if (rows < 0 || in < 0 || out < 0) throw std::invalid_argument("linear_backward: negative size");
  // dx [rows, in] (+)= dy [rows, out] * W [out, in].
  if (dx != nullptr)
    gemm<T, T>(blas, false, false, rows, in, out, 1.0f, dy, W, accumulate_dx ? 1.0f : 0.0f, dx,
               stream);
  // dW [out, in] += dy^T [out, rows] * x [rows, in]  (dy is stored [rows, out]: trans_a).
  if (dW != nullptr) gemm<T, float>(blas, true, false, out, in, rows, 1.0f, dy, x, 1.0f, dW, stream);
  if (db != nullptr) column_sums_accumulate(db, dy, rows, out, stream);
}

template void gemm<float, float>(Blas&, bool, bool, int64_t, int64_t, int64_t, float, const float*,
                                 const float*, float, float*, cudaStream_t);
template void gemm<bf16, float>(Blas&, bool, bool, int64_t, int64_t, int64_t, float, const bf16*,
                                const bf16*, float, float*, cudaStream_t);
template void gemm<bf16, bf16>(Blas&, bool, bool, int64_t, int64_t, int64_t, float, const bf16*,
                               const bf16*, float, bf16*, cudaStream_t);

#define DJ_INSTANTIATE(T)                                                                         \
  template void linear_forward<T>(Blas&, T*, const T*, const T*, const T*, int64_t, int64_t,      \
                                  int64_t, cudaStream_t);                                         \
  template void linear_forward_gelu_tanh<T>(Blas&, T*, T*, const T*, const T*, const T*, int64_t, \
                                            int64_t, int64_t, cudaStream_t);                      \
  template void linear_backward<T>(Blas&, T*, float*, float*, const T*, const T*, const T*,       \
                                   int64_t, int64_t, int64_t, bool, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(bf16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
