// DiJiang's decayed causal linear attention on the GPU (docs/method.md, section 4):
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
#include <algorithm>
#include <cmath>
#include <string>
#include <initializer_list>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dijiang_attention.h"
#include "kernels/cuda/dijiang_attention_device.cuh"
#include "kernels/cuda/launch.h"

namespace dj::cuda {

namespace {

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

// ---- forward / prefill ---------------------------------------------------------------------------

template <typename T, int F>
__global__ void __launch_bounds__(kThreads, 1) decay_forward_kernel(const FwdParams<T> p) {
  constexpr int LDF = F + kPad<T>, LDW = W + kPad<T>, LDS = W + 4;
  DJ_DYNAMIC_SHARED(smem);
  const FwdLayout<T, F> lay(p.C, p.stages);
  const int C = p.C, tid = static_cast<int>(threadIdx.x), warp = tid >> 5;
  const int bh = static_cast<int>(blockIdx.x), h = bh % p.H;
  const int col0 = static_cast<int>(blockIdx.y) * W, wv = min(W, p.dv - col0);
  const bool out = p.o != nullptr;

  float* pw = reinterpret_cast<float*>(smem + lay.pw);
  T* Vd = reinterpret_cast<T*>(smem + lay.vd);
  T* As = reinterpret_cast<T*>(smem + lay.a);
  T* Os = reinterpret_cast<T*>(smem + lay.o);
  float* Sf = reinterpret_cast<float*>(smem + lay.sf);
  T* Sb = reinterpret_cast<T*>(smem + lay.sb);  // == Sf for fp32 (LDS == LDW there)
  const int LDA = C + kPad<T>;

  fill_powers(pw, p.log_gamma[h], C);
  for (int i = tid; i < F * LDS; i += kThreads) Sf[i] = 0.f;
  if constexpr (kIsBf16<T>)
    for (int i = tid; i < F * LDW; i += kThreads) Sb[i] = from_f<T>(0.f);

  const int64_t qk_base = static_cast<int64_t>(bh) * p.n * p.m;
  const int64_t v_base = static_cast<int64_t>(bh) * p.n * p.dv + col0;
  auto Qs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.q + buf * lay.stage_f); };
  auto Ks = [&](int buf) { return reinterpret_cast<T*>(smem + lay.k + buf * lay.stage_f); };
  auto Vs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.v + buf * lay.stage_w); };

  auto issue = [&](int t, int buf) {
    const int t0 = t * C, rows = min(C, p.n - t0);
    if (out)
      load_tile(Qs(buf), LDF, p.fq + qk_base + static_cast<int64_t>(t0) * p.m, p.m, C, F, rows, p.m, p.vec, tid,
                kThreads);
    load_tile(Ks(buf), LDF, p.fk + qk_base + static_cast<int64_t>(t0) * p.m, p.m, C, F, rows, p.m, p.vec, tid,
              kThreads);
    load_tile(Vs(buf), LDW, p.v + v_base + static_cast<int64_t>(t0) * p.dv, p.dv, C, W, rows, wv, p.vec, tid,
              kThreads);
  };

  chunk_loop(p.chunks, p.stages, false, issue, [&](int t, int buf) {
    const int t0 = t * C, L = min(C, p.n - t0);
    const T* Q = Qs(buf);
    const T* K = Ks(buf);
    const T* V = Vs(buf);
    // P0, P1.
    scale_rows(Vd, V, LDW, C, L, pw, false);
    if (out) decayed_scores(C, Q, K, LDF, F, As, LDA, pw);
    __syncthreads();
    // P2: O = diag(γ^(i+1)) (Q S) + A V.
    if (out) {
      const int rt = C / 16;
      for (int idx = warp; idx < rt * (W / 32); idx += kWarps) {
        const int r0 = (idx % rt) * 16, c0 = (idx / rt) * 32;
        float acc[1][4][4];
        acc_zero(acc);
        warp_mma<T, 1, 4, false, false>(acc, Q, LDF, Sb, LDW, r0, c0, 0, F);
        acc_pairs(acc, r0, c0, [&](int i, int, float& v0, float& v1) {
          v0 *= pw[i + 1];
          v1 *= pw[i + 1];
        });
        warp_mma<T, 1, 4, false, false>(acc, As, LDA, V, LDW, r0, c0, 0, r0 + 16);
        acc_pairs(acc, r0, c0, [&](int i, int c, float& v0, float& v1) { store2(Os + i * LDW + c, v0, v1); });
      }
    }
    __syncthreads();
    if (out)
      store_tile(p.o + v_base + static_cast<int64_t>(t0) * p.dv, p.dv, Os, LDW, L, wv, p.vec, tid, kThreads);
    // P3: S = γ^L S + Kᵀ V_d.
    const int kend = (L + 15) / 16 * 16;
    const float decay = pw[L];
    constexpr int RT = F / 32;
    for (int idx = warp; idx < RT * (W / 32); idx += kWarps) {
      const int r0 = (idx % RT) * 32, c0 = (idx / RT) * 32;
      float acc[2][4][4];
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        v0 = Sf[a * LDS + c] * decay;
        v1 = Sf[a * LDS + c + 1] * decay;
      });
      warp_mma<T, 2, 4, true, false>(acc, K, LDF, Vd, LDW, r0, c0, 0, kend);
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        Sf[a * LDS + c] = v0;
        Sf[a * LDS + c + 1] = v1;
        if constexpr (kIsBf16<T>) store2(Sb + a * LDW + c, v0, v1);
      });
    }
  });

  if (p.state != nullptr) {
    __syncthreads();
    float* S = p.state + static_cast<int64_t>(bh) * p.m * p.dv + col0;
    for (int idx = tid; idx < p.m * wv; idx += kThreads) {
      const int a = idx / wv, c = idx - a * wv;
      S[static_cast<int64_t>(a) * p.dv + c] = Sf[a * LDS + c];
    }
  }
}

// ---- backward: role dq (forward sweep over chunks, slice of m) --------------------------------------

template <typename T, int F, bool DLOG>
__device__ __forceinline__ void backward_dq(const BwdParams<T>& p, unsigned char* smem) {
  constexpr int LDF = F + kPad<T>, LDW = W + kPad<T>, LDS = F + 4;
  const DqLayout<T, F, DLOG> lay(p.C, p.stages);
  const int C = p.C, tid = static_cast<int>(threadIdx.x), warp = tid >> 5;
  const int bh = static_cast<int>(blockIdx.x), h = bh % p.H;
  const int m0 = static_cast<int>(blockIdx.y) * W, wm = min(W, p.m - m0);
  const int LDA = C + kPad<T>;

  float* pw = reinterpret_cast<float*>(smem + lay.pw);
  T* Kw = reinterpret_cast<T*>(smem + lay.kw);
  T* Kw2 = reinterpret_cast<T*>(smem + lay.kw2);
  T* dAs = reinterpret_cast<T*>(smem + lay.da);
  float* Sf = reinterpret_cast<float*>(smem + lay.sf);
  T* Sb = reinterpret_cast<T*>(smem + lay.sb);
  float* Rf = reinterpret_cast<float*>(smem + lay.rf);
  T* Rb = reinterpret_cast<T*>(smem + lay.rb);
  T* Out = reinterpret_cast<T*>(smem + lay.out);
  double* red = reinterpret_cast<double*>(smem + lay.red);

  fill_powers(pw, p.log_gamma[h], C);
  for (int i = tid; i < W * LDS; i += kThreads) {
    Sf[i] = 0.f;
    if constexpr (DLOG) Rf[i] = 0.f;
  }
  if constexpr (kIsBf16<T>)
    for (int i = tid; i < W * LDF; i += kThreads) {
      Sb[i] = from_f<T>(0.f);
      if constexpr (DLOG) Rb[i] = from_f<T>(0.f);
    }

  const int64_t qk_base = static_cast<int64_t>(bh) * p.n * p.m + m0;
  const int64_t v_base = static_cast<int64_t>(bh) * p.n * p.dv_size + p.qc0;
  auto Qs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.q + buf * lay.stage_w); };
  auto Ks = [&](int buf) { return reinterpret_cast<T*>(smem + lay.k + buf * lay.stage_w); };
  auto Vs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.v + buf * lay.stage_f); };
  auto dOs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.dout + buf * lay.stage_f); };
  auto issue = [&](int t, int buf) {
    const int t0 = t * C, rows = min(C, p.n - t0);
    const int64_t qk = qk_base + static_cast<int64_t>(t0) * p.m, vo = v_base + static_cast<int64_t>(t0) * p.dv_size;
    if constexpr (DLOG) load_tile(Qs(buf), LDW, p.fq + qk, p.m, C, W, rows, wm, p.vec, tid, kThreads);
    load_tile(Ks(buf), LDW, p.fk + qk, p.m, C, W, rows, wm, p.vec, tid, kThreads);
    load_tile(Vs(buf), LDF, p.v + vo, p.dv_size, C, F, rows, p.qcw, p.vec, tid, kThreads);
    load_tile(dOs(buf), LDF, p.dout + vo, p.dv_size, C, F, rows, p.qcw, p.vec, tid, kThreads);
  };

  double dlog = 0.0;
  chunk_loop(p.chunks, p.stages, false, issue, [&](int t, int buf) {
    const int t0 = t * C, L = min(C, p.n - t0);
    const T* Q = Qs(buf);
    const T* K = Ks(buf);
    const T* V = Vs(buf);
    const T* dO = dOs(buf);
    float* part = p.mode_qk == kEmitStore ? nullptr : p.part_dfq + qk_base + static_cast<int64_t>(t0) * p.m;
    // P0: K_w = diag(γ^(L−1−j)) K (and diag((L−1−j) γ^(L−1−j)) K for the slope R).
    scale_rows(Kw, K, LDW, C, L, pw, false);
    if constexpr (DLOG) scale_rows(Kw2, K, LDW, C, L, pw, false, true);
    // P1: dA = (dO Vᵀ) ⊙ M; with DLOG also Σ (i−j) γ^(i−j) (Q Kᵀ)_ij G_ij over this m-slice.
    for (int idx = warp; idx < lower_tile_count(C); idx += kWarps) {
      int r0, c0;
      lower_tile(idx, r0, c0);
      float g[1][2][4];
      acc_zero(g);
      warp_mma<T, 1, 2, false, true>(g, dO, LDF, V, LDF, r0, c0, 0, F);
      if constexpr (DLOG) {
        float a[1][2][4];
        acc_zero(a);
        warp_mma<T, 1, 2, false, true>(a, Q, LDW, K, LDW, r0, c0, 0, W);
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e) a[0][nt][e] *= g[0][nt][e];
        acc_pairs(a, r0, c0, [&](int i, int j, float& v0, float& v1) {
          if (j <= i) dlog += static_cast<double>(i - j) * pw[i - j] * v0;
          if (j + 1 <= i) dlog += static_cast<double>(i - j - 1) * pw[i - j - 1] * v1;
        });
      }
      store_decayed(g, r0, c0, dAs, LDA, pw);
    }
    __syncthreads();
    // P2: dQ = dA K + diag(γ^(i+1)) dO Sᵀ (+ the dlog terms of S and R).
    const int rt = C / 16;
    for (int idx = warp; idx < rt * (W / 32); idx += kWarps) {
      const int r0 = (idx % rt) * 16, c0 = (idx / rt) * 32;
      float acc[1][4][4];
      acc_zero(acc);
      warp_mma<T, 1, 4, false, true>(acc, dO, LDF, Sb, LDF, r0, c0, 0, F);
      if constexpr (DLOG) {
        float racc[1][4][4];
        acc_zero(racc);
        warp_mma<T, 1, 4, false, true>(racc, dO, LDF, Rb, LDF, r0, c0, 0, F);
        acc_pairs(acc, r0, c0, [&](int i, int c, float& v0, float& v1) {
          const float qs = to_f(Q[i * LDW + c]) * v0 + to_f(Q[i * LDW + c + 1]) * v1;
          dlog += static_cast<double>(i + 1) * pw[i + 1] * qs;
        });
        acc_pairs(racc, r0, c0, [&](int i, int c, float& v0, float& v1) {
          const float qr = to_f(Q[i * LDW + c]) * v0 + to_f(Q[i * LDW + c + 1]) * v1;
          dlog += static_cast<double>(pw[i + 1]) * qr;
        });
      }
      acc_pairs(acc, r0, c0, [&](int i, int, float& v0, float& v1) {
        v0 *= pw[i + 1];
        v1 *= pw[i + 1];
      });
      warp_mma<T, 1, 4, false, false>(acc, dAs, LDA, K, LDW, r0, c0, 0, r0 + 16);
      acc_pairs(acc, r0, c0, [&](int i, int c, float& v0, float& v1) {
        emit_pair(p.mode_qk, Out, LDW, part, p.m, L, wm, i, c, v0, v1);
      });
    }
    __syncthreads();
    if (p.mode_qk == kEmitStore || p.mode_qk == kEmitLast)
      store_tile(p.dfq + qk_base + static_cast<int64_t>(t0) * p.m, p.m, Out, LDW, L, wm, p.vec, tid, kThreads);
    // P3: R = γ^L (R + L S) + K_w2ᵀ V, then S = γ^L S + K_wᵀ V.
    const int kend = (L + 15) / 16 * 16;
    const float decay = pw[L];
    constexpr int CT = F / 32;
    for (int idx = warp; idx < (W / 32) * CT; idx += kWarps) {
      const int r0 = (idx % (W / 32)) * 32, c0 = (idx / (W / 32)) * 32;
      if constexpr (DLOG) {
        float racc[2][4][4];
        acc_pairs(racc, r0, c0, [&](int a, int c, float& v0, float& v1) {
          v0 = decay * (Rf[a * LDS + c] + static_cast<float>(L) * Sf[a * LDS + c]);
          v1 = decay * (Rf[a * LDS + c + 1] + static_cast<float>(L) * Sf[a * LDS + c + 1]);
        });
        warp_mma<T, 2, 4, true, false>(racc, Kw2, LDW, V, LDF, r0, c0, 0, kend);
        acc_pairs(racc, r0, c0, [&](int a, int c, float& v0, float& v1) {
          Rf[a * LDS + c] = v0;
          Rf[a * LDS + c + 1] = v1;
          if constexpr (kIsBf16<T>) store2(Rb + a * LDF + c, v0, v1);
        });
      }
      float acc[2][4][4];
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        v0 = Sf[a * LDS + c] * decay;
        v1 = Sf[a * LDS + c + 1] * decay;
      });
      warp_mma<T, 2, 4, true, false>(acc, Kw, LDW, V, LDF, r0, c0, 0, kend);
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        Sf[a * LDS + c] = v0;
        Sf[a * LDS + c + 1] = v1;
        if constexpr (kIsBf16<T>) store2(Sb + a * LDF + c, v0, v1);
      });
    }
  });

  if constexpr (DLOG) {
    for (int off = 16; off > 0; off >>= 1) dlog += __shfl_xor_sync(0xffffffffu, dlog, off);
    if ((tid & 31) == 0) red[warp] = dlog;
    __syncthreads();
    if (tid == 0) {
      double sum = 0.0;
      for (int w = 0; w < kWarps; ++w) sum += red[w];
      atomicAdd(p.dlog_gamma + h, static_cast<float>(sum));
    }
  }
}

// ---- backward: role dk (reverse sweep, slice of m) -----------------------------------------------

template <typename T, int F>
__device__ __forceinline__ void backward_dk(const BwdParams<T>& p, unsigned char* smem) {
  constexpr int LDF = F + kPad<T>, LDW = W + kPad<T>, LDS = F + 4;
  const DkLayout<T, F> lay(p.C, p.stages);
  const int C = p.C, tid = static_cast<int>(threadIdx.x), warp = tid >> 5;
  const int bh = static_cast<int>(blockIdx.x), h = bh % p.H;
  const int m0 = static_cast<int>(blockIdx.y) * W, wm = min(W, p.m - m0);
  const int LDA = C + kPad<T>;

  float* pw = reinterpret_cast<float*>(smem + lay.pw);
  T* Qd = reinterpret_cast<T*>(smem + lay.qd);
  T* dAs = reinterpret_cast<T*>(smem + lay.da);
  float* Sf = reinterpret_cast<float*>(smem + lay.sf);  // dS
  T* Sb = reinterpret_cast<T*>(smem + lay.sb);
  T* Out = reinterpret_cast<T*>(smem + lay.out);

  fill_powers(pw, p.log_gamma[h], C);
  for (int i = tid; i < W * LDS; i += kThreads) Sf[i] = 0.f;
  if constexpr (kIsBf16<T>)
    for (int i = tid; i < W * LDF; i += kThreads) Sb[i] = from_f<T>(0.f);

  const int64_t qk_base = static_cast<int64_t>(bh) * p.n * p.m + m0;
  const int64_t v_base = static_cast<int64_t>(bh) * p.n * p.dv_size + p.qc0;
  auto Qs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.q + buf * lay.stage_w); };
  auto Vs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.v + buf * lay.stage_f); };
  auto dOs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.dout + buf * lay.stage_f); };
  auto issue = [&](int t, int buf) {
    const int t0 = t * C, rows = min(C, p.n - t0);
    const int64_t qk = qk_base + static_cast<int64_t>(t0) * p.m, vo = v_base + static_cast<int64_t>(t0) * p.dv_size;
    load_tile(Qs(buf), LDW, p.fq + qk, p.m, C, W, rows, wm, p.vec, tid, kThreads);
    load_tile(Vs(buf), LDF, p.v + vo, p.dv_size, C, F, rows, p.qcw, p.vec, tid, kThreads);
    load_tile(dOs(buf), LDF, p.dout + vo, p.dv_size, C, F, rows, p.qcw, p.vec, tid, kThreads);
  };

  chunk_loop(p.chunks, p.stages, true, issue, [&](int t, int buf) {
    const int t0 = t * C, L = min(C, p.n - t0);
    const T* Q = Qs(buf);
    const T* V = Vs(buf);
    const T* dO = dOs(buf);
    float* part = p.mode_qk == kEmitStore ? nullptr : p.part_dfk + qk_base + static_cast<int64_t>(t0) * p.m;
    // P0, P1.
    scale_rows(Qd, Q, LDW, C, L, pw, true);
    decayed_scores(C, dO, V, LDF, F, dAs, LDA, pw);
    __syncthreads();
    // P2: dK = dAᵀ Q + diag(γ^(L−1−j)) V dSᵀ (rows j).
    const int kend = (L + 15) / 16 * 16;
    const int rt = C / 16;
    for (int idx = warp; idx < rt * (W / 32); idx += kWarps) {
      const int r0 = (idx % rt) * 16, c0 = (idx / rt) * 32;
      float acc[1][4][4];
      acc_zero(acc);
      warp_mma<T, 1, 4, false, true>(acc, V, LDF, Sb, LDF, r0, c0, 0, F);
      acc_pairs(acc, r0, c0, [&](int j, int, float& v0, float& v1) {
        const float f = j < L ? pw[L - 1 - j] : 0.f;
        v0 *= f;
        v1 *= f;
      });
      warp_mma<T, 1, 4, true, false>(acc, dAs, LDA, Q, LDW, r0, c0, r0, kend);
      acc_pairs(acc, r0, c0, [&](int j, int c, float& v0, float& v1) {
        emit_pair(p.mode_qk, Out, LDW, part, p.m, L, wm, j, c, v0, v1);
      });
    }
    __syncthreads();
    if (p.mode_qk == kEmitStore || p.mode_qk == kEmitLast)
      store_tile(p.dfk + qk_base + static_cast<int64_t>(t0) * p.m, p.m, Out, LDW, L, wm, p.vec, tid, kThreads);
    // P3: dS = γ^L dS + Q_dᵀ dO.
    const float decay = pw[L];
    constexpr int CT = F / 32;
    for (int idx = warp; idx < (W / 32) * CT; idx += kWarps) {
      const int r0 = (idx % (W / 32)) * 32, c0 = (idx / (W / 32)) * 32;
      float acc[2][4][4];
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        v0 = Sf[a * LDS + c] * decay;
        v1 = Sf[a * LDS + c + 1] * decay;
      });
      warp_mma<T, 2, 4, true, false>(acc, Qd, LDW, dO, LDF, r0, c0, 0, kend);
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        Sf[a * LDS + c] = v0;
        Sf[a * LDS + c + 1] = v1;
        if constexpr (kIsBf16<T>) store2(Sb + a * LDF + c, v0, v1);
      });
    }
  });
}

// ---- backward: role dv (reverse sweep, slice of dv) ----------------------------------------------

template <typename T, int F>
__device__ __forceinline__ void backward_dv(const BwdParams<T>& p, unsigned char* smem) {
  constexpr int LDF = F + kPad<T>, LDW = W + kPad<T>, LDS = W + 4;
  const DvLayout<T, F> lay(p.C, p.stages);
  const int C = p.C, tid = static_cast<int>(threadIdx.x), warp = tid >> 5;
  const int bh = static_cast<int>(blockIdx.x), h = bh % p.H;
  const int col0 = static_cast<int>(blockIdx.y) * W, wv = min(W, p.dv_size - col0);
  const int LDA = C + kPad<T>;

  float* pw = reinterpret_cast<float*>(smem + lay.pw);
  T* dOd = reinterpret_cast<T*>(smem + lay.dod);
  T* As = reinterpret_cast<T*>(smem + lay.a);
  float* Sf = reinterpret_cast<float*>(smem + lay.sf);  // dS
  T* Sb = reinterpret_cast<T*>(smem + lay.sb);
  T* Out = reinterpret_cast<T*>(smem + lay.out);

  fill_powers(pw, p.log_gamma[h], C);
  for (int i = tid; i < F * LDS; i += kThreads) Sf[i] = 0.f;
  if constexpr (kIsBf16<T>)
    for (int i = tid; i < F * LDW; i += kThreads) Sb[i] = from_f<T>(0.f);

  const int64_t qk_base = static_cast<int64_t>(bh) * p.n * p.m + p.vm0;
  const int64_t v_base = static_cast<int64_t>(bh) * p.n * p.dv_size + col0;
  auto Qs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.q + buf * lay.stage_f); };
  auto Ks = [&](int buf) { return reinterpret_cast<T*>(smem + lay.k + buf * lay.stage_f); };
  auto dOs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.dout + buf * lay.stage_w); };
  auto issue = [&](int t, int buf) {
    const int t0 = t * C, rows = min(C, p.n - t0);
    const int64_t qk = qk_base + static_cast<int64_t>(t0) * p.m, vo = v_base + static_cast<int64_t>(t0) * p.dv_size;
    load_tile(Qs(buf), LDF, p.fq + qk, p.m, C, F, rows, p.vmw, p.vec, tid, kThreads);
    load_tile(Ks(buf), LDF, p.fk + qk, p.m, C, F, rows, p.vmw, p.vec, tid, kThreads);
    load_tile(dOs(buf), LDW, p.dout + vo, p.dv_size, C, W, rows, wv, p.vec, tid, kThreads);
  };

  chunk_loop(p.chunks, p.stages, true, issue, [&](int t, int buf) {
    const int t0 = t * C, L = min(C, p.n - t0);
    const T* Q = Qs(buf);
    const T* K = Ks(buf);
    const T* dO = dOs(buf);
    float* part = p.mode_v == kEmitStore ? nullptr : p.part_dv + v_base + static_cast<int64_t>(t0) * p.dv_size;
    // P0, P1.
    scale_rows(dOd, dO, LDW, C, L, pw, true);
    decayed_scores(C, Q, K, LDF, F, As, LDA, pw);
    __syncthreads();
    // P2: dV = Aᵀ dO + diag(γ^(L−1−j)) K dS (rows j).
    const int kend = (L + 15) / 16 * 16;
    const int rt = C / 16;
    for (int idx = warp; idx < rt * (W / 32); idx += kWarps) {
      const int r0 = (idx % rt) * 16, c0 = (idx / rt) * 32;
      float acc[1][4][4];
      acc_zero(acc);
      warp_mma<T, 1, 4, false, false>(acc, K, LDF, Sb, LDW, r0, c0, 0, F);
      acc_pairs(acc, r0, c0, [&](int j, int, float& v0, float& v1) {
        const float f = j < L ? pw[L - 1 - j] : 0.f;
        v0 *= f;
        v1 *= f;
      });
      warp_mma<T, 1, 4, true, false>(acc, As, LDA, dO, LDW, r0, c0, r0, kend);
      acc_pairs(acc, r0, c0, [&](int j, int c, float& v0, float& v1) {
        emit_pair(p.mode_v, Out, LDW, part, p.dv_size, L, wv, j, c, v0, v1);
      });
    }
    __syncthreads();
    if (p.mode_v == kEmitStore || p.mode_v == kEmitLast)
      store_tile(p.dv + v_base + static_cast<int64_t>(t0) * p.dv_size, p.dv_size, Out, LDW, L, wv, p.vec, tid,
                 kThreads);
    // P3: dS = γ^L dS + Qᵀ dO_d.
    const float decay = pw[L];
    constexpr int RT = F / 32;
    for (int idx = warp; idx < RT * (W / 32); idx += kWarps) {
      const int r0 = (idx % RT) * 32, c0 = (idx / RT) * 32;
      float acc[2][4][4];
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        v0 = Sf[a * LDS + c] * decay;
        v1 = Sf[a * LDS + c + 1] * decay;
      });
      warp_mma<T, 2, 4, true, false>(acc, Q, LDF, dOd, LDW, r0, c0, 0, kend);
      acc_pairs(acc, r0, c0, [&](int a, int c, float& v0, float& v1) {
        Sf[a * LDS + c] = v0;
        Sf[a * LDS + c + 1] = v1;
        if constexpr (kIsBf16<T>) store2(Sb + a * LDW + c, v0, v1);
      });
    }
  });
}

// blockIdx.z: 0 = dq (slices of m), 1 = dk (slices of m), 2 = dv (slices of dv). Blocks past their
// role's slice count leave at once (the whole block, before any barrier).
template <typename T, int F, bool DLOG>
__global__ void __launch_bounds__(kThreads, 1) decay_backward_kernel(const BwdParams<T> p) {
  DJ_DYNAMIC_SHARED(smem);
  const int slice = static_cast<int>(blockIdx.y);
  if (blockIdx.z == 0) {
    if (p.run_qk && slice * W < p.m) backward_dq<T, F, DLOG>(p, smem);
  } else if (blockIdx.z == 1) {
    if (p.run_qk && slice * W < p.m) backward_dk<T, F>(p, smem);
  } else {
    if (p.run_v && slice * W < p.dv_size) backward_dv<T, F>(p, smem);
  }
}

// ---- decoding step ---------------------------------------------------------------------------------
// Block (32 columns x 8 row groups) per (bh = blockIdx.x, 32 columns of dv = blockIdx.y): each
// thread updates the state entries of one column for rows a = y, y + 8, ... and its partial of o;
// the partials meet in shared memory.
// Memory-bound: reads and writes the fp32 state once (8 m dv bytes per row).
template <typename T>
__global__ void __launch_bounds__(256) decay_step_kernel(T* o, float* state, const T* fq, const T* fk, const T* v,
                                                         const float* log_gamma, int H, int m, int dv) {
  __shared__ float part[8][33];
  const int bh = static_cast<int>(blockIdx.x), x = static_cast<int>(threadIdx.x), y = static_cast<int>(threadIdx.y);
  const int c = static_cast<int>(blockIdx.y) * 32 + x;
  const float gamma = static_cast<float>(exp(static_cast<double>(log_gamma[bh % H])));
  float acc = 0.f;
  if (c < dv) {
    const float vc = to_f(v[static_cast<int64_t>(bh) * dv + c]);
    float* S = state + static_cast<int64_t>(bh) * m * dv + c;
    const T* q = fq + static_cast<int64_t>(bh) * m;
    const T* k = fk + static_cast<int64_t>(bh) * m;
    for (int a = y; a < m; a += 8) {
      const float s = gamma * S[static_cast<int64_t>(a) * dv] + to_f(k[a]) * vc;
      S[static_cast<int64_t>(a) * dv] = s;
      acc += to_f(q[a]) * s;
    }
  }
  part[y][x] = acc;
  __syncthreads();
  if (y == 0 && c < dv) {
    float sum = 0.f;
    for (int r = 0; r < 8; ++r) sum += part[r][x];
    o[static_cast<int64_t>(bh) * dv + c] = from_f<T>(sum);
  }
}

// ---- host side -------------------------------------------------------------------------------------

void check_shape(const char* op, int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv) {
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

template <typename T, int F>
void launch_forward(const FwdParams<T>& base, int64_t BH, int64_t chunk, const char* op, cudaStream_t stream) {
  const ChunkConfig cfg =
      pick_chunk(chunk, op, [](int C, int stages) { return FwdLayout<T, F>(C, stages).bytes; });
  FwdParams<T> p = base;
  p.C = cfg.C;
  p.stages = cfg.stages;
  p.chunks = (p.n + cfg.C - 1) / cfg.C;
  auto kernel = decay_forward_kernel<T, F>;
  allow_shared(kernel, cfg.bytes);
  const dim3 grid(static_cast<unsigned>(BH), static_cast<unsigned>((p.dv + W - 1) / W));
  launch("decay_forward_kernel", kernel, grid, kThreads, cfg.bytes, stream, p);
}

template <typename T, int F, bool DLOG>
void launch_backward(const BwdParams<T>& base, int64_t BH, int64_t chunk, cudaStream_t stream) {
  const char* op = "decay_attention_backward";
  const ChunkConfig cfg = pick_chunk(chunk, op, [](int C, int stages) {
    return std::max({DqLayout<T, F, DLOG>(C, stages).bytes, DkLayout<T, F>(C, stages).bytes,
                     DvLayout<T, F>(C, stages).bytes});
  });
  BwdParams<T> p = base;
  p.C = cfg.C;
  p.stages = cfg.stages;
  p.chunks = (p.n + cfg.C - 1) / cfg.C;
  auto kernel = decay_backward_kernel<T, F, DLOG>;
  allow_shared(kernel, cfg.bytes);
  const int slices = (std::max(p.m, p.dv_size) + W - 1) / W;
  const dim3 grid(static_cast<unsigned>(BH), static_cast<unsigned>(slices), 3);
  launch("decay_backward_kernel", kernel, grid, kThreads, cfg.bytes, stream, p);
}

template <typename T>
void run_forward(T* o, float* state, const T* fq, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                 int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk, cudaStream_t stream, const char* op) {
  FwdParams<T> p{};
  p.o = o;
  p.state = state;
  p.fq = fq;
  p.fk = fk;
  p.v = v;
  p.log_gamma = log_gamma;
  p.H = static_cast<int>(H);
  p.n = static_cast<int>(n);
  p.m = static_cast<int>(m);
  p.dv = static_cast<int>(dv);
  p.vec = vector_ok<T>(m, dv, {o, fq, fk, v});
  if (m <= 64)
    launch_forward<T, 64>(p, BH, chunk, op, stream);
  else if (m <= 128)
    launch_forward<T, 128>(p, BH, chunk, op, stream);
  else
    launch_forward<T, 256>(p, BH, chunk, op, stream);
}

// One backward launch (all three roles, or the pass's) at the narrowest F that holds its widths.
template <typename T>
void launch_backward_pass(const BwdParams<T>& p, int64_t BH, int64_t chunk, cudaStream_t stream) {
  const int widest = std::max(p.run_qk ? p.qcw : 0, p.run_v ? p.vmw : 0);
  if (p.dlog_gamma != nullptr) {
    if (widest > 64)
      launch_backward<T, 128, true>(p, BH, chunk, stream);
    else
      launch_backward<T, 64, true>(p, BH, chunk, stream);
  } else {
    if (widest > 64)
      launch_backward<T, 128, false>(p, BH, chunk, stream);
    else
      launch_backward<T, 64, false>(p, BH, chunk, stream);
  }
}

// How pass `pass` of `count` (1 or 2) passes leaves an output that is the sum over the passes.
int emit_mode(int pass, int count) {
  if (count == 1) return kEmitStore;
  return pass == 0 ? kEmitFirst : kEmitLast;
}

}  // namespace

template <typename T>
void decay_attention_forward(T* o, const T* fq, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                             int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk, cudaStream_t stream) {
  const char* op = "decay_attention_forward";
  check_shape(op, BH, H, n, m, dv);
  if (BH == 0 || n == 0) return;
  run_forward<T>(o, nullptr, fq, fk, v, log_gamma, BH, H, n, m, dv, chunk, stream, op);
}

template <typename T>
void decay_attention_prefill_state(float* state, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                                   int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk,
                                   cudaStream_t stream) {
  const char* op = "decay_attention_prefill_state";
  check_shape(op, BH, H, n, m, dv);
  if (BH == 0) return;
  run_forward<T>(nullptr, state, fk, fk, v, log_gamma, BH, H, n, m, dv, chunk, stream, op);
}

template <typename T>
void decay_attention_backward(T* dfq, T* dfk, T* dv, float* dlog_gamma, const T* dout, const T* fq, const T* fk,
                              const T* v, const float* log_gamma, int64_t BH, int64_t H, int64_t n, int64_t m,
                              int64_t dv_size, int64_t chunk, cudaStream_t stream) {
  check_shape("decay_attention_backward", BH, H, n, m, dv_size);
  if (BH == 0 || n == 0) return;
  BwdParams<T> p{};
  p.dfq = dfq;
  p.dfk = dfk;
  p.dv = dv;
  p.dlog_gamma = dlog_gamma;
  p.dout = dout;
  p.fq = fq;
  p.fk = fk;
  p.v = v;
  p.log_gamma = log_gamma;
  p.H = static_cast<int>(H);
  p.n = static_cast<int>(n);
  p.m = static_cast<int>(m);
  p.dv_size = static_cast<int>(dv_size);
  p.vec = vector_ok<T>(m, dv_size, {dfq, dfk, dv, dout, fq, fk, v});
  // Passes over blocks of kPassWidth columns: pass b runs the dq and dk roles on the dv columns of
  // block b (while b < qk_passes) and the dv role on the m columns of block b (while b < v_passes).
  const int qk_passes = static_cast<int>((dv_size + kPassWidth - 1) / kPassWidth);
  const int v_passes = static_cast<int>((m + kPassWidth - 1) / kPassWidth);
  static_assert(2 * kPassWidth >= kMaxHeadDim, "at most two passes");
  // fp32 partial sums: the fp32 outputs themselves, else a stream-ordered scratch (freed in order).
  float* scratch = nullptr;
  const size_t qk_count = static_cast<size_t>(BH * n * m), v_count = static_cast<size_t>(BH * n * dv_size);
  if constexpr (kIsBf16<T>) {
    const size_t count = (qk_passes > 1 ? 2 * qk_count : 0) + (v_passes > 1 ? v_count : 0);
    if (count > 0) DJ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&scratch), count * sizeof(float), stream));
    p.part_dfq = qk_passes > 1 ? scratch : nullptr;
    p.part_dfk = qk_passes > 1 ? scratch + qk_count : nullptr;
    p.part_dv = v_passes > 1 ? scratch + (qk_passes > 1 ? 2 * qk_count : 0) : nullptr;
  } else {
    p.part_dfq = dfq;
    p.part_dfk = dfk;
    p.part_dv = dv;
  }
  try {
    for (int pass = 0; pass < std::max(qk_passes, v_passes); ++pass) {
      p.run_qk = pass < qk_passes;
      p.qc0 = static_cast<int>(pass * kPassWidth);
      p.qcw = p.run_qk ? static_cast<int>(std::min<int64_t>(kPassWidth, dv_size - p.qc0)) : 0;
      p.mode_qk = emit_mode(pass, qk_passes);
      p.run_v = pass < v_passes;
      p.vm0 = static_cast<int>(pass * kPassWidth);
      p.vmw = p.run_v ? static_cast<int>(std::min<int64_t>(kPassWidth, m - p.vm0)) : 0;
      p.mode_v = emit_mode(pass, v_passes);
      launch_backward_pass(p, BH, chunk, stream);
    }
  } catch (...) {
    if (scratch != nullptr) cudaFreeAsync(scratch, stream);
    throw;
  }
  if (scratch != nullptr) DJ_CUDA_CHECK(cudaFreeAsync(scratch, stream));
}

template <typename T>
void decay_attention_step(T* o, float* state, const T* fq, const T* fk, const T* v, const float* log_gamma,
                          int64_t BH, int64_t H, int64_t m, int64_t dv, cudaStream_t stream) {
  const char* op = "decay_attention_step";
  check_shape(op, BH, H, 1, m, dv);
  if (BH == 0) return;
  const dim3 grid(static_cast<unsigned>(BH), static_cast<unsigned>((dv + 31) / 32));
  launch("decay_step_kernel", decay_step_kernel<T>, grid, dim3(32, 8), 0, stream, o, state, fq, fk, v, log_gamma,
         static_cast<int>(H), static_cast<int>(m), static_cast<int>(dv));
}

#define DJ_INSTANTIATE(T)                                                                                     \
  template void decay_attention_forward<T>(T*, const T*, const T*, const T*, const float*, int64_t, int64_t, \
                                           int64_t, int64_t, int64_t, int64_t, cudaStream_t);                 \
  template void decay_attention_backward<T>(T*, T*, T*, float*, const T*, const T*, const T*, const T*,      \
                                            const float*, int64_t, int64_t, int64_t, int64_t, int64_t,       \
                                            int64_t, cudaStream_t);                                           \
  template void decay_attention_step<T>(T*, float*, const T*, const T*, const T*, const float*, int64_t,     \
                                        int64_t, int64_t, int64_t, cudaStream_t);                             \
  template void decay_attention_prefill_state<T>(float*, const T*, const T*, const float*, int64_t, int64_t, \
                                                 int64_t, int64_t, int64_t, int64_t, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(__nv_bfloat16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
