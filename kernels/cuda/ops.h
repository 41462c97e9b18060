// CUDA versions of the model ops of kernels/cpu and of the AdamW step of trainer/optim.
//
// Conventions, shared by every function here:
//   - every pointer is device memory unless its comment says otherwise; every launch goes to the
//     explicit `stream`, and nothing synchronises except the few functions that return a host value
//     (they say so);
//   - layouts are those of the CPU ops (row-major, same argument order where the CPU has one);
//   - activations are T = float or T = __nv_bfloat16 (explicitly instantiated for both); all
//     arithmetic is fp32 (or better) and bf16 values are rounded to nearest even once, on store;
//   - parameter gradients (dW, db, LayerNorm dw/db, embedding dtable) are fp32 accumulators for both
//     T: the += semantics of the CPU ops, never a bf16 sum;
//   - reductions are deterministic: fixed partitions that depend only on the problem shape, summed in
//     a fixed order (no floating-point atomics in these ops; the DiJiang attention kernels add three
//     parameter gradients with fp32 atomics, as kernels/cuda/dijiang_attention.h says);
//   - errors (bad arguments, CUDA and cuBLAS failures) throw std::runtime_error or
//     std::invalid_argument. Kernels cannot throw: where the CPU op validates data (token ids,
//     targets), the CUDA op says below what it does instead.
//
// This header compiles under nvcc (C++17) and the host compiler (C++20): CUDA and std headers only.
#pragma once
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace dj::cuda {

using bf16 = __nv_bfloat16;

// ---------------------------------------------------------------------------------------------
// Matrix products (cuBLASLt, fp32 compute)
// ---------------------------------------------------------------------------------------------

// A cuBLASLt handle, its workspace and a cache of the algorithms the heuristic chose per problem.
// Not thread-safe, and the workspace is shared by every product issued through it: use one Blas per
// stream that runs products concurrently. Needs a current CUDA device (the workspace is allocated
// at construction).
class Blas {
 public:
  static constexpr size_t kDefaultWorkspaceBytes = size_t(32) << 20;  // NVIDIA's advice for Hopper

  explicit Blas(size_t workspace_bytes = kDefaultWorkspaceBytes);
  ~Blas();
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;

  cublasLtHandle_t handle() const { return handle_; }
  void* workspace() const { return workspace_; }
  size_t workspace_bytes() const { return workspace_bytes_; }

  // Products cuBLASLt offered no algorithm for, done by a plain (slow, correct) CUDA-core kernel.
  int64_t fallback_products() const;

  struct Cache;  // defined in gemm.cu
  Cache& cache() const { return *cache_; }

 private:
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  Cache* cache_ = nullptr;
};

// Row-major C[M,N] = alpha * op(A) * op(B) + beta * C, op(A) [M,K], op(B) [K,N], as cpu::gemm.
// A is stored [M,K] (or [K,M] when trans_a), B [K,N] (or [N,K] when trans_b), C [M,N], all dense.
// (TA, TC) = (float, float), (bf16, float) and (bf16, bf16); compute and alpha/beta are fp32 (no
// TF32). With beta == 0, C is not read (it may hold NaN). K == 0 gives C = beta * C. Should
// cuBLASLt offer no algorithm for a problem, a plain tiled kernel computes it (counted by
// Blas::fallback_products()).
template <typename TA, typename TC>
void gemm(Blas& blas, bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha,
          const TA* A, const TA* B, float beta, TC* C, cudaStream_t stream);

// y[rows,out] = x[rows,in] * W[out,in]^T + b, b [out] may be null; the bias is added in the cuBLASLt
// epilogue (no extra pass over y).
template <typename T>
void linear_forward(Blas& blas, T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in,
                    int64_t out, cudaStream_t stream);

// y = gelu_tanh(x W^T + b) with the bias and the GELU fused into the product's epilogue where
// cuBLASLt offers it. cuBLASLt's GELU epilogue is the tanh approximation only: the exact (erf)
// GELU cannot be fused and stays a separate gelu_forward. `pre` [rows,out] (may be null) receives
// x W^T + b, the input gelu_backward needs. When the fused epilogue is unavailable for the shape
// (cuBLASLt wants the pre-activation's leading dimension `out` divisible by 8) the product with the
// bias epilogue is followed by gelu_forward(Tanh); the result is the same function.
template <typename T>
void linear_forward_gelu_tanh(Blas& blas, T* y, T* pre, const T* x, const T* W, const T* b,
                              int64_t rows, int64_t in, int64_t out, cudaStream_t stream);

// As cpu::linear_backward: dx = dy W (added to dx when accumulate_dx), dW += dy^T x, db += column
// sums of dy. dW [out,in] and db [out] are fp32 accumulators for both T (for T = bf16 the product
// accumulates bf16 operands into the fp32 dW directly). Any of dx, dW, db may be null.
template <typename T>
void linear_backward(Blas& blas, T* dx, float* dW, float* db, const T* dy, const T* x, const T* W,
                     int64_t rows, int64_t in, int64_t out, bool accumulate_dx, cudaStream_t stream);

// db[c] += sum over rows of dy[r, c] (deterministic: fixed row chunks, then the chunks in order).
template <typename T>
void column_sums_accumulate(float* db, const T* dy, int64_t rows, int64_t cols, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// LayerNorm over the last dimension (biased variance), as cpu::layernorm_*
// ---------------------------------------------------------------------------------------------

// y = (x - mean) * rstd * w + b per row; mean and rstd [rows] are saved in fp32 for the backward.
template <typename T>
void layernorm_forward(T* y, float* mean, float* rstd, const T* x, const T* w, const T* b,
                       int64_t rows, int64_t channels, double eps, cudaStream_t stream);

// dx += d/dx (T), dw += d/dw and db += d/db (fp32); any of the three may be null.
template <typename T>
void layernorm_backward(T* dx, float* dw, float* db, const T* dy, const T* x, const T* w,
                        const float* mean, const float* rstd, int64_t rows, int64_t channels,
                        cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// GELU
// ---------------------------------------------------------------------------------------------

enum class GeluKind { Erf, Tanh };

// y may alias x.
template <typename T>
void gelu_forward(T* y, const T* x, int64_t n, GeluKind kind, cudaStream_t stream);

// dx = dy * gelu'(x); dx may alias dy.
template <typename T>
void gelu_backward(T* dx, const T* dy, const T* x, int64_t n, GeluKind kind, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Partial rotary position embedding (GPT-NeoX), as cpu::rotary_*
// ---------------------------------------------------------------------------------------------

// cos/sin of every (position, frequency) pair, computed on the host in double exactly as the CPU op
// does (std::pow for inv_freq, std::cos/std::sin of (position_offset + t) * inv_freq) and uploaded
// once: [max_len][rotary_dims/2] pairs (cos, sin). Build one per (max_len, rotary_dims, base,
// offset) and keep it; the constructor copies synchronously.
class RotaryTable {
 public:
  RotaryTable(int64_t max_len, int64_t rotary_dims, double base, int64_t position_offset = 0);
  ~RotaryTable();
  RotaryTable(RotaryTable&& other) noexcept;
  RotaryTable& operator=(RotaryTable&& other) noexcept;
  RotaryTable(const RotaryTable&) = delete;
  RotaryTable& operator=(const RotaryTable&) = delete;

  const double* data() const { return table_; }  // device, 2 * max_len * rotary_dims/2 doubles
  int64_t max_len() const { return max_len_; }
  int64_t rotary_dims() const { return rotary_dims_; }

 private:
  double* table_ = nullptr;
  int64_t max_len_ = 0;
  int64_t rotary_dims_ = 0;
};

// x: [BH, T_len, d] rotated in place, token t at the table's position position_offset + t, i.e. at
// offset + position_offset + t (position_offset + T_len <= table.max_len(), rotary_dims <= d). The rotation is done in double from the double table, with the CPU's operation
// order and no fused multiply-adds: fp32 results equal the CPU's bit for bit (but for ~2^-28 of the
// values when the CPU build contracts to FMA).
template <typename T>
void rotary_forward(T* x, const RotaryTable& table, int64_t BH, int64_t T_len, int64_t d,
                    cudaStream_t stream, int64_t position_offset = 0);

// The adjoint (rotation by the negative angle), in place on the gradient.
template <typename T>
void rotary_backward(T* dx, const RotaryTable& table, int64_t BH, int64_t T_len, int64_t d,
                     cudaStream_t stream, int64_t position_offset = 0);

// ---------------------------------------------------------------------------------------------
// Token embedding
// ---------------------------------------------------------------------------------------------

// out[i, :] = table[ids[i], :]. ids (device) must lie in [0, vocab); the CPU op throws on others,
// a kernel cannot: an id outside writes a row of zeros. Validate ids on the host before upload.
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab,
                       int64_t channels, cudaStream_t stream);

// dtable[ids[i], :] += dout[i, :] into an fp32 table. Deterministic and sort-free: each block owns
// a range of vocabulary rows, walks all ids in order and adds the matching positions in ascending
// i, so every element sees the CPU's order of additions (bit-identical for T = float). Ids outside
// [0, vocab) are skipped.
template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                        int64_t channels, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// Fused softmax + cross-entropy, as cpu::softmax_cross_entropy
// ---------------------------------------------------------------------------------------------

struct CrossEntropyResult {
  double loss_sum = 0.0;  // sum of -log p(target) over counted rows
  int64_t count = 0;      // rows whose target is in [0, vocab)
};

// Device-side totals of softmax_cross_entropy_async.
struct CrossEntropyTotals {
  double loss_sum;
  long long count;    // rows with a target in [0, vocab)
  long long invalid;  // rows with a target >= vocab (the CPU op throws on those)
};

// logits [rows, vocab], targets (device) [rows]; negative targets are ignored. Probabilities are
// never stored: with write_gradient each row is overwritten in place by
// grad_scale * (softmax(row) - onehot(target)); ignored rows (and rows with a target >= vocab) get
// zeros. Per-row losses go to row_loss [rows] (device workspace, fp64), then one block sums them in
// a fixed order into *totals (device). Nothing is synchronised.
template <typename T>
void softmax_cross_entropy_async(T* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                                 bool write_gradient, float grad_scale, double* row_loss,
                                 CrossEntropyTotals* totals, cudaStream_t stream);

// The same with its own workspace, synchronising `stream` to return the totals; throws
// std::runtime_error (after the logits were processed) when a target is >= vocab.
template <typename T>
CrossEntropyResult softmax_cross_entropy(T* logits, const int32_t* targets, int64_t rows,
                                         int64_t vocab, bool write_gradient, float grad_scale,
                                         cudaStream_t stream);

// Cross-entropy with a distillation term, as dj::cpu::distill_cross_entropy: per row with a
// target, −log softmax(z)[target] + weight · τ² · KL(softmax(t/τ) ‖ softmax(z/τ)) into row_loss (fp64)
// and the totals (as softmax_cross_entropy_async); with write_gradient the logits row becomes
// grad_scale · (softmax(z) − onehot + weight · τ · (softmax(z/τ) − softmax(t/τ))). teacher
// [rows, vocab]. Nothing is synchronised.
template <typename T>
void distill_cross_entropy_async(T* logits, const T* teacher, const int32_t* targets, int64_t rows, int64_t vocab,
                                 bool write_gradient, float grad_scale, float weight, float temperature,
                                 double* row_loss, CrossEntropyTotals* totals, cudaStream_t stream);

// The attention-transfer loss, as dj::cpu::squared_error: Σ (a − b)² over n values (each difference
// in fp32, squared and summed in fp64 over fixed blocks of 4096 values, then the block sums in
// order by one block) into *result (device); with grad non-null, grad = grad_scale · (a − b) (may
// alias a or b). Nothing is synchronised.
template <typename T>
void squared_error_async(T* grad, const T* a, const T* b, int64_t n, float grad_scale, double* result,
                         cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// AdamW on flat fp32 buffers, as dj::adamw_step (trainer/optim/adamw.h)
// ---------------------------------------------------------------------------------------------

struct AdamWParams {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// One step over n values: the scalars are formed on the host in double and rounded to float
// exactly as the CPU does, and the kernel repeats the CPU's float operations one by one with
// explicitly rounded intrinsics (fmaf only where the CPU calls std::fma), so the results are
// bit-identical to dj::adamw_step. decay (device, n bytes) marks the values that take weight decay;
// update (device, may be null) the values that train at all.
void adamw_step(float* params, float* m, float* v, const float* grads, const uint8_t* decay,
                const uint8_t* update, int64_t n, int64_t step, double lr, const AdamWParams& config,
                cudaStream_t stream);

// Σ g² in fp64, deterministic (fixed 4096-value blocks, then the block sums in order by one block),
// written to *result (device). Not the CPU's summation order: equal to it to ~1e-15 relative.
void sum_of_squares_async(const float* grads, int64_t n, double* result, cudaStream_t stream);
// The same, synchronising `stream` to return it; global_norm is its root.
double sum_of_squares(const float* grads, int64_t n, cudaStream_t stream);
double global_norm(const float* grads, int64_t n, cudaStream_t stream);

// As dj::clip_by_global_norm: factor = float(max_norm / (norm + 1e-6)) applied when below 1; returns
// the factor (1 when nothing was scaled). The scaling is bit-identical to the CPU's.
double clip_by_global_norm(float* grads, int64_t n, double norm, double max_norm,
                           cudaStream_t stream);

// x *= factor (one rounded fp32 multiply per value).
void scale(float* x, int64_t n, float factor, cudaStream_t stream);

// ---------------------------------------------------------------------------------------------
// bf16 <-> fp32 (master-weight copies)
// ---------------------------------------------------------------------------------------------

// Round to nearest even (__float2bfloat16_rn: NaN stays NaN, overflow goes to infinity).
void convert(bf16* dst, const float* src, int64_t n, cudaStream_t stream);
// Exact.
void convert(float* dst, const bf16* src, int64_t n, cudaStream_t stream);

}  // namespace dj::cuda
