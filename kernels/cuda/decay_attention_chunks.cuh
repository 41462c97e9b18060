// DiJiang's decayed causal linear attention on the GPU (docs/method.md, section 4), in the chunkwise
// form: what its kernels share (this header), the forward and the prefill state
// (decay_attention_forward.cu), the backward (decay_attention_backward.cu) and the decoding step
// (decay_attention_decode.cu). The design, for all of them:
//
//   o_i = Σ_{j<=i} γ^(i−j) ⟨fq_i, fk_j⟩ v_j,   γ = exp(log γ) per head,
//
// in the chunkwise form (chunk length C, chunk t at positions t0 .. t0 + L − 1, L <= C):
//   O_t = diag(γ^(i+1)) Q_t S_{t−1} + ((Q_t K_tᵀ) ⊙ M) V_t,          M_ij = γ^(i−j) for j <= i
//   S_t = γ^L S_{t−1} + K_tᵀ diag(γ^(L−1−j)) V_t
// and its reverse mode (kernels/cpu/decay_attention.cpp spells out every term):
//   dQ_t     = dA K_t + diag(γ^(i+1)) dO_t S_{t−1}ᵀ,                 dA = (dO_t V_tᵀ) ⊙ M
//   dK_t     = dAᵀ Q_t + diag(γ^(L−1−j)) V_t dS_tᵀ
//   dV_t     = Aᵀ dO_t + diag(γ^(L−1−j)) K_t dS_t,                   A = (Q_t K_tᵀ) ⊙ M
//   dS_{t−1} = γ^L dS_t + Q_tᵀ diag(γ^(i+1)) dO_t
// Only the powers γ^0 .. γ^C are formed (a table per block, from exp in fp64; values under
// FLT_MIN flush to 0 like the CPU's): no γ^(−j), no absolute positions.
//
// Structure: one block of 256 threads (8 warps) per (bh, 64-wide slice) walks its chunks in
// order, the state in shared memory (fp32, plus a T copy that feeds the tensor cores), the next
// chunk's inputs arriving by cp.async while the current one is computed (2 stages when shared
// memory allows). All products are warp_mma tiles (dijiang_attention_device.cuh): bf16 mma.sync with
// fp32 accumulation, or FFMA for fp32. The slice splits the dimension that the state update does
// not reduce over, so the blocks of one bh never communicate:
//   forward            slice = 64 columns of dv; state m x 64;   scores Q Kᵀ over all of m
//   backward, role dq  slice = 64 columns of m;  state 64 x dv;  forward sweep
//   backward, role dk  slice = 64 columns of m;  dS 64 x dv;     reverse sweep
//   backward, role dv  slice = 64 columns of dv; dS m x 64;      reverse sweep
// The three backward roles are one launch (blockIdx.z), so they run concurrently.
//
// Per chunk (forward): P0 V_d = diag(γ^(L−1−j)) V; P1 A = (Q Kᵀ) ⊙ M (16 x 16 tiles at or below
// the diagonal only) -> shared (T); barrier; P2 O = diag(γ^(i+1)) (Q S) + A V (16 x 32 tiles) ->
// shared staging; barrier; coalesced store of O; P3 S = γ^L S + Kᵀ V_d (32 x 32 tiles).
// Three barriers per chunk (P2 reads the T copy of S that P3 rewrites).
//
// Shared memory (bf16, C = 64, m = dv = 128): forward 165 KB (Q and K double-buffered 34 + 34,
// V double-buffered 18, V_d, A and O staging 9 each, S fp32 34 + its bf16 copy 18); backward
// ~165 KB for each role (the dq role with dlog γ adds the slope R: 1 stage, 188 KB). One block
// per SM. fp32 and larger chunks fall back to 1 stage, then to smaller chunks, to fit the
// device's opt-in limit (227 KB on sm_90, 163 KB on sm_80).
// Head sizes above 128 (Pythia-1b: m = dv = 256; kMaxHeadDim). The forward and the prefill keep
// their structure at F = 256: Q and K chunk tiles of C x 256 and the state 256 x 64 (fp32 68 KB and
// its bf16 copy 36 KB). pick_chunk fits them: on sm_90 bf16 runs chunk 64 with one stage (206 KB),
// fp32 chunk 32 (163 KB); on sm_80 bf16 chunk 32 (153 KB), fp32 chunk 16 (151 KB, 2 stages).
// A backward role at dv (or m) = 256 would hold the 64 x 256 state (and the slope R beside it for
// dlog γ) besides C x 256 tiles of v and dout: past sm_80's limit, and with R past sm_90's. So the
// backward runs as passes over 128-wide column blocks b of the dimension each role reduces over
// (the dq and dk roles: columns of v and dout; the dv role: columns of fq and fk), each pass the
// F = 128 kernel with the shared memory above. Every output is the sum of its blocks' terms:
//   dQ = Σ_b dA_b K + diag(γ^(i+1)) dO_b S_bᵀ,  dA_b = (dO_b V_bᵀ) ⊙ M   (likewise dK, dV),
// and every dlog γ term is bilinear over the blocks (each block adds its own with one atomicAdd).
// Pass 0 writes its fp32 partial sums (kEmitFirst), pass 1 adds its own and rounds once to T
// (kEmitLast), so the result is that of one pass up to fp32 reassociation, and deterministic.
// fp32 outputs hold the partial themselves; bf16 ones take a stream-ordered fp32 scratch of
// BH n (2m + dv) values (12 d bytes per token and head at m = dv = d: 384 MiB for Pythia-1b's
// micro-batch of 8 x 2048; trainer/train/memory_plan.cpp counts it). The passes re-read the
// m-slice of fq, fk (dq, dk roles) and the dv-slice of dout (dv role) once more, and each pass
// multiplies its own C x C score tile into the output (dA K, dAᵀ Q, Aᵀ dO): ~5% more FLOPs.
// Registers: only transient warp tiles (a 16 x 32 output tile is 16 fp32 accumulators per thread,
// a 32 x 32 state tile 32); ptxas (sm_90): forward 123-131 (m = 256 included), backward 136-192
// (bf16) / 136-168 (fp32) registers per thread, no spills.
// Parallelism: BH x ceil(dv / 64) forward blocks and BH x (2 ceil(m / 64) + ceil(dv / 64))
// backward blocks; at d = 64 with BH = 64 the forward fills only 64 of the H200's 132 SMs
// (narrower slices or a chunk-parallel state scan would fill it; not done here).
//
// Gradient of log γ (dlog_gamma non-null): every power γ^k contributes k γ^k times its adjoint.
// Gathering the terms so that no forward state and backward adjoint are needed together, with
// R_t = ∂S_t/∂log γ (which obeys R_t = γ^L (R_{t−1} + L S_{t−1}) + K_tᵀ diag((L−1−j) γ^(L−1−j)) V_t):
//   Σ_t [ Σ_{j<=i} (i−j) A_ij G_ij                        (intra-chunk, G = dO Vᵀ)
//       + Σ_i (i+1) γ^(i+1) ⟨q_i, (dO S_{t−1}ᵀ)_i⟩          (inter-chunk decay)
//       + Σ_i γ^(i+1) ⟨q_i, (dO R_{t−1}ᵀ)_i⟩ ]              (the state's own slope)
// The dq role carries R beside S and sums these; every term is bilinear over the m-slices, so
// each block adds its fp64 partial to dlog_gamma[h] with one fp32 atomicAdd.
//
// Cost (reference page): ~4 m (dv + C) FLOPs per token per head forward (m = dv = d: 4d(d + c));
// the backward does ~2.5x that (the dA product is formed by both m-slice roles). Bytes: forward
// reads fq, fk, v and writes o once (2 (2m + 2dv) bytes per token-head in bf16); with m = dv = 128
// and C = 64 that is ~100 FLOP/byte, under the H200's ~180 FLOP/byte ridge: memory-bound when the
// chunk pipeline keeps up, otherwise bound by the sequential chunk chain of one bh.
#pragma once
#include <algorithm>
#include <cmath>
#include <string>
#include <initializer_list>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dijiang_attention.h"
#include "kernels/cuda/dijiang_attention_device.cuh"
#include "kernels/cuda/launch.h"

namespace dj::cuda::decay {

using namespace attn;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int W = 64;  // slice width
// Widths of the column blocks of a backward pass (m or dv above this take several passes).
constexpr int64_t kPassWidth = 128;

// ---- pieces shared by the kernels ----------------------------------------------------------------

// pw[k] = γ^k for k = 0..C, from exp in fp64 (as the CPU's decay_powers).
__device__ __forceinline__ void fill_powers(float* pw, float log_gamma, int C) {
  for (int k = static_cast<int>(threadIdx.x); k <= C; k += kThreads) {
    const double p = exp(static_cast<double>(k) * static_cast<double>(log_gamma));
    pw[k] = p < static_cast<double>(FLT_MIN) ? 0.f : static_cast<float>(p);
  }
}

// Walks `chunks` chunks (in reverse when `reverse`), issuing chunk loads through issue(t, buf) and
// running body(t, buf) once the chunk's data is in shared memory. With 2 stages the next chunk's
// copies fly while the current one is computed. Every barrier here is reached by all threads.
template <typename Issue, typename Body>
__device__ __forceinline__ void chunk_loop(int chunks, int stages, bool reverse, Issue&& issue, Body&& body) {
  auto chunk_at = [&](int u) { return reverse ? chunks - 1 - u : u; };
  if (stages == 2 && chunks > 0) {
    issue(chunk_at(0), 0);
    cp_async_commit();
  }
  for (int u = 0; u < chunks; ++u) {
    const int buf = stages == 2 ? (u & 1) : 0;
    if (stages == 1) {
      __syncthreads();  // every thread is done with the previous chunk's buffers
      issue(chunk_at(u), 0);
      cp_async_commit();
    }
    cp_async_wait_all();
    __syncthreads();  // chunk u is visible; chunk u - 1 is finished everywhere
    if (stages == 2 && u + 1 < chunks) {
      issue(chunk_at(u + 1), buf ^ 1);
      cp_async_commit();
    }
    body(chunk_at(u), buf);
  }
}

// The 16 x 16 tiles at or below the diagonal of a C x C score matrix, dealt to the warps.
__device__ __forceinline__ void lower_tile(int idx, int& r0, int& c0) {
  int tr = 0, rem = idx;
  while (rem > tr) {
    rem -= tr + 1;
    ++tr;
  }
  r0 = 16 * tr;
  c0 = 16 * rem;
}
__device__ __forceinline__ int lower_tile_count(int C) { return (C / 16) * (C / 16 + 1) / 2; }

// out[i][j] = j <= i ? acc · γ^(i−j) : 0 for one 16 x 16 score tile.
template <typename T>
__device__ __forceinline__ void store_decayed(float (&acc)[1][2][4], int r0, int c0, T* out, int ldo,
                                              const float* pw) {
  acc_pairs(acc, r0, c0, [&](int i, int j, float& v0, float& v1) {
    const float a0 = j <= i ? v0 * pw[i - j] : 0.f;
    const float a1 = j + 1 <= i ? v1 * pw[i - j - 1] : 0.f;
    store2(out + i * ldo + j, a0, a1);
  });
}

// scores (T, ld C + pad) = (X Yᵀ) ⊙ M over k = 0..K for the lower tiles; X, Y: [C][ld].
template <typename T>
__device__ __forceinline__ void decayed_scores(int C, const T* X, const T* Y, int ld, int K, T* out, int ldo,
                                               const float* pw) {
  const int warp = static_cast<int>(threadIdx.x) >> 5;
  for (int idx = warp; idx < lower_tile_count(C); idx += kWarps) {
    int r0, c0;
    lower_tile(idx, r0, c0);
    float acc[1][2][4];
    acc_zero(acc);
    warp_mma<T, 1, 2, false, true>(acc, X, ld, Y, ld, r0, c0, 0, K);
    store_decayed(acc, r0, c0, out, ldo, pw);
  }
}

// Scales row j of a [C][W] tile by γ^(L−1−j) (0 for j >= L) into dst, or by γ^(j+1) with `query`.
template <typename T>
__device__ __forceinline__ void scale_rows(T* dst, const T* src, int ld, int C, int L, const float* pw, bool query,
                                           bool with_exponent = false) {
  for (int idx = static_cast<int>(threadIdx.x); idx < C * W; idx += kThreads) {
    const int j = idx / W, c = idx - j * W;
    float f = 0.f;
    if (j < L) {
      const int e = query ? j + 1 : L - 1 - j;
      f = pw[e] * (with_exponent ? static_cast<float>(e) : 1.f);
    }
    dst[j * ld + c] = from_f<T>(to_f(src[j * ld + c]) * f);
  }
}

// How a backward pass leaves an output (see "Head sizes above 128" at the top): kEmitStore writes it
// (T); of two passes, the first (kEmitFirst) writes its fp32 partial sum to `part` and the second
// (kEmitLast) adds it to its own and writes the total, rounded once to T.
enum Emit : int { kEmitStore = 0, kEmitFirst = 1, kEmitLast = 2 };

// Leaves the pair (i, c), (i, c + 1) of an output chunk tile by `mode` (Emit): into the staging tile
// `out` (T) for store_tile (kEmitStore, and kEmitLast after adding the partial sums), or into the
// fp32 partial sums (kEmitFirst), where row i of the chunk is part + i * ld and only rows i < L and
// columns < w exist.
template <typename T>
__device__ __forceinline__ void emit_pair(int mode, T* out, int ldo, float* part, int64_t ld, int L, int w, int i,
                                          int c, float v0, float v1) {
  if (mode == kEmitFirst) {
    if (i < L) {
      float* row = part + static_cast<int64_t>(i) * ld;
      if (c < w) row[c] = v0;
      if (c + 1 < w) row[c + 1] = v1;
    }
    return;
  }
  if (mode == kEmitLast && i < L) {
    const float* row = part + static_cast<int64_t>(i) * ld;
    if (c < w) v0 += row[c];
    if (c + 1 < w) v1 += row[c + 1];
  }
  store2(out + i * ldo + c, v0, v1);
}

// ---- layouts (byte offsets into dynamic shared memory; host and device agree) ----------------------

template <typename T>
__host__ __device__ constexpr size_t tile_bytes(int rows, int width) {
  return static_cast<size_t>(rows) * static_cast<size_t>(width + kPad<T>) * sizeof(T);
}

// Forward / prefill. F: m padded to 64, 128 or 256.
template <typename T, int F>
struct FwdLayout {
  size_t q, k, v, stage_f, stage_w, vd, a, o, sf, sb, pw, bytes;
  __host__ __device__ FwdLayout(int C, int stages) {
    Bump b;
    stage_f = (tile_bytes<T>(C, F) + 15) / 16 * 16;
    stage_w = (tile_bytes<T>(C, W) + 15) / 16 * 16;
    q = b.take(stages * stage_f);
    k = b.take(stages * stage_f);
    v = b.take(stages * stage_w);
    vd = b.take(tile_bytes<T>(C, W));
    a = b.take(tile_bytes<T>(C, C));
    o = b.take(tile_bytes<T>(C, W));
    sf = b.take(static_cast<size_t>(F) * (W + 4) * sizeof(float));
    sb = kIsBf16<T> ? b.take(tile_bytes<T>(F, W)) : sf;
    pw = b.take((C + 1) * sizeof(float));
    bytes = b.bytes;
  }
};

// Backward: one layout per role. F: the widest column block of the pass (max(m, dv) when both are
// <= 128) padded to 64 or 128.
template <typename T, int F, bool DLOG>
struct DqLayout {  // slice of m; state W x F
  size_t q, k, v, dout, stage_w, stage_f, kw, kw2, da, sf, sb, rf, rb, out, pw, red, bytes;
  __host__ __device__ DqLayout(int C, int stages) {
    Bump b;
    stage_w = (tile_bytes<T>(C, W) + 15) / 16 * 16;
    stage_f = (tile_bytes<T>(C, F) + 15) / 16 * 16;
    q = DLOG ? b.take(stages * stage_w) : 0;
    k = b.take(stages * stage_w);
    v = b.take(stages * stage_f);
    dout = b.take(stages * stage_f);
    kw = b.take(tile_bytes<T>(C, W));
    kw2 = DLOG ? b.take(tile_bytes<T>(C, W)) : 0;
    da = b.take(tile_bytes<T>(C, C));
    sf = b.take(static_cast<size_t>(W) * (F + 4) * sizeof(float));
    sb = kIsBf16<T> ? b.take(tile_bytes<T>(W, F)) : sf;
    rf = DLOG ? b.take(static_cast<size_t>(W) * (F + 4) * sizeof(float)) : 0;
    rb = DLOG ? (kIsBf16<T> ? b.take(tile_bytes<T>(W, F)) : rf) : 0;
    out = b.take(tile_bytes<T>(C, W));
    pw = b.take((C + 1) * sizeof(float));
    red = b.take(kWarps * sizeof(double));
    bytes = b.bytes;
  }
};

template <typename T, int F>
struct DkLayout {  // slice of m; dS W x F
  size_t q, v, dout, stage_w, stage_f, qd, da, sf, sb, out, pw, bytes;
  __host__ __device__ DkLayout(int C, int stages) {
    Bump b;
    stage_w = (tile_bytes<T>(C, W) + 15) / 16 * 16;
    stage_f = (tile_bytes<T>(C, F) + 15) / 16 * 16;
    q = b.take(stages * stage_w);
    v = b.take(stages * stage_f);
    dout = b.take(stages * stage_f);
    qd = b.take(tile_bytes<T>(C, W));
    da = b.take(tile_bytes<T>(C, C));
    sf = b.take(static_cast<size_t>(W) * (F + 4) * sizeof(float));
    sb = kIsBf16<T> ? b.take(tile_bytes<T>(W, F)) : sf;
    out = b.take(tile_bytes<T>(C, W));
    pw = b.take((C + 1) * sizeof(float));
    bytes = b.bytes;
  }
};

template <typename T, int F>
struct DvLayout {  // slice of dv; dS F x W
  size_t q, k, dout, stage_f, stage_w, dod, a, sf, sb, out, pw, bytes;
  __host__ __device__ DvLayout(int C, int stages) {
    Bump b;
    stage_f = (tile_bytes<T>(C, F) + 15) / 16 * 16;
    stage_w = (tile_bytes<T>(C, W) + 15) / 16 * 16;
    q = b.take(stages * stage_f);
    k = b.take(stages * stage_f);
    dout = b.take(stages * stage_w);
    dod = b.take(tile_bytes<T>(C, W));
    a = b.take(tile_bytes<T>(C, C));
    sf = b.take(static_cast<size_t>(F) * (W + 4) * sizeof(float));
    sb = kIsBf16<T> ? b.take(tile_bytes<T>(F, W)) : sf;
    out = b.take(tile_bytes<T>(C, W));
    pw = b.take((C + 1) * sizeof(float));
    bytes = b.bytes;
  }
};

template <typename T>
struct FwdParams {
  T* o;           // null: prefill (no outputs, final state to `state`)
  float* state;   // null: forward
  const T *fq, *fk, *v;
  const float* log_gamma;
  int H, n, m, dv, C, chunks, stages;
  bool vec;
};

template <typename T>
struct BwdParams {
  T *dfq, *dfk, *dv;
  float* dlog_gamma;
  const T *dout, *fq, *fk, *v;
  const float* log_gamma;
  int H, n, m, dv_size, C, chunks, stages;
  bool vec;
  // The pass: the dq and dk roles (run_qk) use the dv columns [qc0, qc0 + qcw) of v and dout, the
  // dv role (run_v) the m columns [vm0, vm0 + vmw) of fq and fk; their outputs leave by mode_qk and
  // mode_v, through the fp32 partial sums part_dfq, part_dfk ([BH, n, m]) and part_dv ([BH, n, dv]).
  int qc0, qcw, vm0, vmw;
  bool run_qk, run_v;
  int mode_qk, mode_v;
  float *part_dfq, *part_dfk, *part_dv;
};

// ---- host side, shared by the launches ------------------------------------------------------------

inline void check_shape(const char* op, int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv) {
  require(BH >= 0 && H >= 1 && n >= 0, op, "invalid shape (BH >= 0, H >= 1, n >= 0)");
  require(m >= 1 && m <= kMaxHeadDim && dv >= 1 && dv <= kMaxHeadDim, op,
          ("m and dv must be in 1.." + std::to_string(kMaxHeadDim)).c_str());
  require(n <= (int64_t{1} << 30) && BH * n <= (int64_t{1} << 40), op, "sequence too long");
}

// Chunk length and pipeline depth: the largest multiple of 16 <= chunk (clamped to 16..128), 2 stages
// when they fit in shared memory, else 1, else halve the chunk.
struct ChunkConfig {
  int C = 0, stages = 0;
  size_t bytes = 0;
};
template <typename Bytes>
ChunkConfig pick_chunk(int64_t chunk, const char* op, Bytes&& bytes_for) {
  if (chunk <= 0) chunk = kDefaultDecayChunk;
  int C = static_cast<int>(std::clamp<int64_t>(chunk, 16, 128)) / 16 * 16;
  const size_t limit = max_shared_optin();
  for (;;) {
    for (int stages = 2; stages >= 1; --stages) {
      const size_t bytes = bytes_for(C, stages);
      if (bytes <= limit) return {C, stages, bytes};
    }
    require(C > 16, op, "does not fit in shared memory");
    C = std::max(16, C / 2 / 16 * 16);
  }
}

template <typename T>
bool vector_ok(int64_t m, int64_t dv, std::initializer_list<const void*> pointers) {
  if (m % kVec<T> != 0 || dv % kVec<T> != 0) return false;
  for (const void* p : pointers)
    if (p != nullptr && !aligned16(p)) return false;
  return true;
}

}  // namespace dj::cuda::decay
