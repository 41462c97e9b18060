// CUDA kernels of DiJiang attention and of the softmax-attention teacher
// (docs/method.md, sections 2-4). The CPU references are in kernels/cpu/dijiang.h and
// kernels/cpu/attention.h; each op here computes the same function with the same layouts:
// row-major, "BH" rows are (batch, head) pairs and row bh belongs to head bh % H.
//
// Conventions for every function:
//   - all pointers are device pointers; work is queued on `stream` (no synchronisation);
//   - activations have type T, float or __nv_bfloat16; parameters (the projection P, log γ,
//     feature weights, GroupNorm affine), saved statistics, decoding states and every parameter
//     gradient are fp32; all accumulation is fp32 (the dlog γ partial sums use fp64);
//   - invalid arguments throw std::invalid_argument, CUDA failures std::runtime_error;
//   - gradients named "accumulates" are added to (+=), with fp32 atomics: their summation order,
//     and so their last bits, can differ between runs. Every other output is deterministic.
//
// Header for nvcc and for the host compiler alike (no CUDA-only syntax).
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace dj::cuda {

// The largest head size (d, m, dv) the attention kernels here support: every Pythia size (head sizes
// 32, 64, 80, 128 and 256; docs/pythia.md). Sizes up to 128 run the kernels tuned for 64 and 128;
// 129..256 run the paths described at each function (and in each .cu file's header), all within
// the opt-in shared memory of sm_80 (163 KB) and sm_90 (227 KB).
inline constexpr int64_t kMaxHeadDim = 256;

// Chunk length of the chunkwise decay attention when the caller passes chunk <= 0.
constexpr int64_t kDefaultDecayChunk = 64;

// ---- feature map: s = softmax(x · P) over the d features of each row ----------------------------
// x, s, dx, ds: [rows, d]; P: [d, d] fp32 (P = C · diag(t), applied as x · P). d <= kMaxHeadDim.
// Above d = 128, P no longer fits in shared memory: it streams through it in slabs, from a prepared
// copy in a stream-ordered scratch of 256 KB (cudaMallocAsync) made by each call.
template <typename T>
void feature_map_forward(T* s, const T* x, const float* P, int64_t rows, int64_t d, cudaStream_t stream);
// dx = (s ⊙ (ds − ⟨s, ds⟩)) · Pᵀ (overwrites dx). P is fixed: no gradient.
template <typename T>
void feature_map_backward(T* dx, const T* ds, const T* s, const float* P, int64_t rows, int64_t d,
                          cudaStream_t stream);

// ---- optional learned feature weights: phi = w[h] ⊙ s --------------------------------------------
// s, phi: [BH, n, d]; w, dw: [H, d] fp32. d <= kMaxHeadDim.
template <typename T>
void feature_weights_forward(T* phi, const T* s, const float* w, int64_t BH, int64_t H, int64_t n, int64_t d,
                             cudaStream_t stream);
// ds = w[h] ⊙ dphi (overwrites; ds may alias dphi); dw accumulates Σ dphi ⊙ s.
template <typename T>
void feature_weights_backward(T* ds, float* dw, const T* dphi, const T* s, const float* w, int64_t BH, int64_t H,
                              int64_t n, int64_t d, cudaStream_t stream);

// ---- decayed causal linear attention: o_i = Σ_{j<=i} γ_h^(i−j) ⟨fq_i, fk_j⟩ v_j ------------------
// fq, fk: [BH, n, m]; v, o: [BH, n, dv]; log_gamma: [H] fp32 (γ = exp(log γ) < 1). m, dv <=
// kMaxHeadDim; any n >= 0. chunk: block length of the chunkwise form, 16..128 (<= 0:
// kDefaultDecayChunk). The kernels use the largest multiple of 16 not above it that fits the
// device's shared memory (the result does not depend on the chunk length beyond rounding; the
// forward at m > 128 takes chunk 64 in one stage (bf16) or 32 (fp32) on sm_90, 32 (bf16) or 16
// (fp32) on sm_80). Only relative decay exponents are formed (i − j >= 0, chunk-local offsets, the
// chunk length).
template <typename T>
void decay_attention_forward(T* o, const T* fq, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                             int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk, cudaStream_t stream);
// Overwrites dfq, dfk, dv; dlog_gamma [H] (nullable) accumulates the gradient w.r.t. log γ.
// Shared memory: the forward and backward need ~165 KB per block at chunk 64 and m = dv = 128 and
// shrink the chunk to fit the device (sm_80: 163 KB, sm_90: 227 KB); the smallest configuration
// with m or dv > 64 and dlog_gamma still needs ~121 KB (bf16), so smaller parts throw.
// m or dv above 128: the backward runs as two passes over 128-wide column blocks, whose partial
// sums meet in fp32 (still deterministic; one rounding to T); for bf16 they live in a stream-ordered
// scratch of BH n (2m + dv) fp32 values at most (cudaMallocAsync, freed in stream order), fp32
// outputs hold their own.
template <typename T>
void decay_attention_backward(T* dfq, T* dfk, T* dv, float* dlog_gamma, const T* dout, const T* fq, const T* fk,
                              const T* v, const float* log_gamma, int64_t BH, int64_t H, int64_t n, int64_t m,
                              int64_t dv_size, int64_t chunk, cudaStream_t stream);
// One decoding step: S = γ S + fkᵀ v, o = fq · S. state: [BH, m, dv] fp32, updated in place;
// fq, fk: [BH, m]; v, o: [BH, dv].
template <typename T>
void decay_attention_step(T* o, float* state, const T* fq, const T* fk, const T* v, const float* log_gamma,
                          int64_t BH, int64_t H, int64_t m, int64_t dv, cudaStream_t stream);
// The state after a prefix of n tokens, S_n = Σ_j γ^(n−1−j) fk_jᵀ v_j, computed chunkwise.
// fk: [BH, n, m]; v: [BH, n, dv]; state: [BH, m, dv] fp32 (overwritten; zeros for n = 0).
template <typename T>
void decay_attention_prefill_state(float* state, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                                   int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk,
                                   cudaStream_t stream);

// ---- GroupNorm fused with the swish gate: y = silu(g) ⊙ GroupNorm(x) ------------------------------
// x, g, y, gn: [rows, channels]; w, b: [channels] fp32; mean, rstd: [rows, groups] fp32 (saved for
// the backward). Each row is split into `groups` groups of channels / groups consecutive channels
// (biased variance, two-pass statistics), as cpu::group_norm_forward followed by
// cpu::silu_gate_forward. gn (nullable) receives GroupNorm(x) = x̂ w + b; the backward does not
// need it: it recomputes x̂ from x, mean and rstd.
template <typename T>
void group_norm_gate_forward(T* y, T* gn, float* mean, float* rstd, const T* x, const float* w, const float* b,
                             const T* g, int64_t rows, int64_t channels, int64_t groups, float eps,
                             cudaStream_t stream);
// Overwrites dx and dg; dw and db (fp32 [channels]) accumulate.
template <typename T>
void group_norm_gate_backward(T* dx, T* dg, float* dw, float* db, const T* dy, const T* x, const T* g,
                              const float* w, const float* b, const float* mean, const float* rstd, int64_t rows,
                              int64_t channels, int64_t groups, cudaStream_t stream);

// ---- causal softmax attention (the teacher), flash-attention style -------------------------------
// q, k, v, o: [BH, T, d]; lse: [BH, T] fp32, the log-sum-exp of each row of scaled scores, saved
// for the backward. o_i = Σ_{j<=i} softmax_j(scale q_i·k_j) v_j. d <= kMaxHeadDim (64 and 128 are
// the tuned sizes; above 128 each block computes 128 of the output columns and the scores over
// all of d, so the score products are done once per 128 columns). The T x T matrix never exists.
template <typename T>
void causal_attention_forward(T* o, float* lse, const T* q, const T* k, const T* v, int64_t BH, int64_t T_len,
                              int64_t d, float scale, cudaStream_t stream);
// Overwrites dq, dk, dv. Recomputes the probabilities tile by tile from q, k and lse; uses a
// stream-ordered fp32 scratch of BH * T values (cudaMallocAsync).
template <typename T>
void causal_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* o,
                               const float* lse, int64_t BH, int64_t T_len, int64_t d, float scale,
                               cudaStream_t stream);

}  // namespace dj::cuda
