// Causal softmax attention on the GPU, the teacher of a DiJiang conversion: flash-attention style
// (FlashAttention-2 work split), tiled with an online softmax so the T x T matrix never exists.
// Same function and layouts as cpu::causal_attention_forward/backward; lse is fp32.
//
// Forward: block of 4 warps per (bh, 64 query rows), heaviest (last) query tiles first. Q (64 x d)
// stays in shared memory; K and V tiles of 64 keys stream through 2 cp.async stages. Per key tile
// each warp owns 16 query rows: S = Q Kᵀ (16 x 64 fp32 accumulators), scale and causal mask, the
// running max / sum in the log2 domain (exp2f; a row lives in the 4 lanes of a quad), P rounded to
// T into the warp's private 16 x 64 shared slot, O += P V (16 x d accumulators, rescaled by the max
// correction). Only key tiles at or below the diagonal are visited.
// Backward: D_i = dO_i · O_i is formed by the dQ kernel (into a stream-ordered scratch), then
//   dQ kernel   per (bh, 64 query rows): over key tiles, S and dP = dO Vᵀ recomputed,
//               dS = P ⊙ (dP − D), dQ += dS K (16 x d accumulators per warp);
//   dK/dV kernel per (bh, 64 keys): over query tiles of 32 (d = 128) or 64 rows, the transposed
//               products Sᵀ = K Qᵀ and dPᵀ = V dOᵀ per warp (16 keys each), dV += Pᵀ dO, dK += dSᵀ Q.
// Registers per thread: O (or dQ) 16 x d fp32 accumulators = 64 at d = 128, S and dP 32 each;
// dK/dV keeps dK and dV (64 + 64) with 16 x 32 Sᵀ and dPᵀ. ptxas (sm_90): 170-255, no spills.
// Two kernels instead of atomics on dQ: deterministic, at the price of recomputing S and dP once
// more (7 tile products per tile pair instead of 5).
// Shared memory, bf16, d = 128: forward 17 + 2 x 2 x 17 + 9 KB = 96 KB (2 blocks per SM); dQ 113 KB;
// dK/dV 80 KB. fp32 falls back to one stage where two do not fit. Sizes below 64 and 65..127 run the
// DP = 64 and 128 kernels on zero-padded tiles.
// d = 129..256 (Pythia-1b's 256, DP = 256): a 16 x 256 output tile per warp would be 128 fp32
// accumulators per thread besides S and dP (dK/dV: 256), so each block computes DV = 128 of the
// output columns (grid.z = 2 parts) and forms the scores (and dP) over all of d: the score
// products are done once per part, 1.5x the forward's FLOPs, 1.6x the backward's. The first part
// writes lse and D (every part forms the same ones). Tiles (Cfg): bf16 keeps 4 warps and 64-key
// tiles; fp32 takes 32-key tiles and 2-warp (32-row) dQ and dK/dV blocks. Shared memory, bf16:
// forward 142 KB (2 stages), dQ 208 KB on sm_90 (2 stages) / 142 KB on sm_80 (1 stage), dK/dV
// 143 KB; fp32: forward 172 / 123 KB, dQ 200 / 135 KB, dK/dV 204 / 139 KB (sm_90, 2 stages /
// sm_80, 1 stage). ptxas (sm_90) at d = 256: forward 176 (bf16) / 230 (fp32) registers, dQ 166 /
// 140, dK/dV 255 / 254, no spills.
// Cost: forward 4 T² d / 2 FLOPs per bh (2 T² d), backward 2.5x that (5 products) by the usual
// count; bytes ~ 4 T d (forward) and ~ 8 T d (backward) values: at T = 16384, d = 128 the
// intensity is ~ T / 2 FLOP per byte, far above the ~180 FLOP/B ridge: matrix-bound.
#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dijiang_attention.h"
#include "kernels/cuda/dijiang_attention_device.cuh"
#include "kernels/cuda/launch.h"

namespace dj::cuda {

namespace {

using namespace attn;

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Tile shapes per (T, padded head size DP). DV: the output columns of one block (blockIdx.z is the
// part, parts = ceil(d / DV)). Rows: query rows per forward / dQ block, keys per dK/dV block (16 per
// warp). Keys: the key tile of the forward and dQ loops; Q: the query tile of the dK/dV loop.
template <typename T, int DP>
struct Cfg {
  static constexpr bool kWide = DP > 128;
  static constexpr bool kSmall = kWide && !kIsBf16<T>;  // fp32 at DP = 256: tiles that fit sm_80
  static constexpr int DV = kWide ? 128 : DP;
  static constexpr int kFwdWarps = 4, kFwdKeys = kSmall ? 32 : 64;
  static constexpr int kDqWarps = kSmall ? 2 : 4, kDqKeys = kSmall ? 32 : 64;
  static constexpr int kKvWarps = kSmall ? 2 : 4, kKvQ = DP > 64 ? 32 : 64;
};

template <typename T>
__host__ __device__ constexpr size_t tile_bytes(int rows, int width) {
  return static_cast<size_t>(rows) * static_cast<size_t>(width + kPad<T>) * sizeof(T);
}
__host__ __device__ constexpr size_t round16(size_t n) { return (n + 15) / 16 * 16; }

template <typename T, int DP>
struct FwdLayout {
  size_t q, k, v, k_stage, v_stage, p, bytes;
  __host__ __device__ explicit FwdLayout(int stages) {
    using C = Cfg<T, DP>;
    Bump b;
    q = b.take(tile_bytes<T>(16 * C::kFwdWarps, DP));
    k_stage = round16(tile_bytes<T>(C::kFwdKeys, DP));
    v_stage = round16(tile_bytes<T>(C::kFwdKeys, C::DV));
    k = b.take(stages * k_stage);
    v = b.take(stages * v_stage);
    p = b.take(C::kFwdWarps * tile_bytes<T>(16, C::kFwdKeys));
    bytes = b.bytes;
  }
};

template <typename T, int DP>
struct DqLayout {
  size_t q, dout, k, v, stage, ds, lse, dd, bytes;
  __host__ __device__ explicit DqLayout(int stages) {
    using C = Cfg<T, DP>;
    constexpr int BR = 16 * C::kDqWarps;
    Bump b;
    q = b.take(tile_bytes<T>(BR, DP));
    dout = b.take(tile_bytes<T>(BR, DP));
    stage = round16(tile_bytes<T>(C::kDqKeys, DP));
    k = b.take(stages * stage);
    v = b.take(stages * stage);
    ds = b.take(C::kDqWarps * tile_bytes<T>(16, C::kDqKeys));
    lse = b.take(BR * sizeof(float));
    dd = b.take(BR * sizeof(float));
    bytes = b.bytes;
  }
};

template <typename T, int DP>
struct DkvLayout {
  size_t k, v, q, dout, stage, lse, dd, stage_f, p, ds, bytes;
  __host__ __device__ explicit DkvLayout(int stages) {
    using C = Cfg<T, DP>;
    constexpr int BQ = C::kKvQ, BKV = 16 * C::kKvWarps;
    Bump b;
    k = b.take(tile_bytes<T>(BKV, DP));
    v = b.take(tile_bytes<T>(BKV, DP));
    stage = round16(tile_bytes<T>(BQ, DP));
    q = b.take(stages * stage);
    dout = b.take(stages * stage);
    stage_f = round16(BQ * sizeof(float));
    lse = b.take(stages * stage_f);
    dd = b.take(stages * stage_f);
    p = b.take(C::kKvWarps * tile_bytes<T>(16, BQ));
    ds = b.take(C::kKvWarps * tile_bytes<T>(16, BQ));
    bytes = b.bytes;
  }
};

template <typename T>
struct Params {
  T *o, *dq, *dk, *dv;
  float* lse_out;  // forward
  float* D;        // backward scratch [BH, T]
  const T *q, *k, *v, *out, *dout;
  const float* lse;
  int T_len, d, stages, tiles;
  float scale, scale_log2;
  bool vec;
};

// Shared pipeline: `fixed` loads (once, before the first tile), tile loads through issue(i, buf),
// body(i, buf) once tile i is in shared memory.
template <typename Fixed, typename Issue, typename Body>
__device__ __forceinline__ void tile_loop(int count, int stages, Fixed&& fixed, Issue&& issue, Body&& body) {
  if (stages == 2) {
    fixed();
    issue(0, 0);
    cp_async_commit();
  }
  for (int i = 0; i < count; ++i) {
    const int buf = stages == 2 ? (i & 1) : 0;
    if (stages == 1) {
      __syncthreads();
      if (i == 0) fixed();
      issue(i, 0);
      cp_async_commit();
    }
    cp_async_wait_all();
    __syncthreads();
    if (stages == 2 && i + 1 < count) {
      issue(i + 1, buf ^ 1);
      cp_async_commit();
    }
    body(i, buf);
  }
}

// ---- forward -------------------------------------------------------------------------------------

template <typename T, int DP>
__global__ void __launch_bounds__(Cfg<T, DP>::kFwdWarps * 32) flash_forward_kernel(const Params<T> p) {
  using C = Cfg<T, DP>;
  constexpr int BR = 16 * C::kFwdWarps, BK = C::kFwdKeys, DV = C::DV, NTHR = 32 * C::kFwdWarps;
  constexpr int LD = DP + kPad<T>, LDV = DV + kPad<T>, LDP = BK + kPad<T>, NO = DV / 8, NS = BK / 8;
  DJ_DYNAMIC_SHARED(smem);
  const FwdLayout<T, DP> lay(p.stages);
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int qt = p.tiles - 1 - static_cast<int>(blockIdx.x), bh = static_cast<int>(blockIdx.y);
  const int q0 = qt * BR, T_len = p.T_len, d = p.d;
  const int c0 = static_cast<int>(blockIdx.z) * DV, dvw = min(DV, d - c0);  // this block's output columns
  const int64_t base = static_cast<int64_t>(bh) * T_len * d;
  const int key_tiles = (min(T_len, q0 + BR) - 1) / BK + 1;

  T* Qs = reinterpret_cast<T*>(smem + lay.q);
  auto Ks = [&](int buf) { return reinterpret_cast<T*>(smem + lay.k + buf * lay.k_stage); };
  auto Vs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.v + buf * lay.v_stage); };
  T* Pw = reinterpret_cast<T*>(smem + lay.p) + warp * 16 * LDP;

  float o[1][NO][4];
  acc_zero(o);
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};
  const int qw = q0 + warp * 16;  // first query row of this warp

  tile_loop(
      key_tiles, p.stages,
      [&] {
        load_tile(Qs, LD, p.q + base + static_cast<int64_t>(q0) * d, d, BR, DP, T_len - q0, d, p.vec, tid, NTHR);
      },
      [&](int j, int buf) {
        const int k0 = j * BK;
        const int64_t at = base + static_cast<int64_t>(k0) * d;
        load_tile(Ks(buf), LD, p.k + at, d, BK, DP, T_len - k0, d, p.vec, tid, NTHR);
        load_tile(Vs(buf), LDV, p.v + at + c0, d, BK, DV, T_len - k0, dvw, p.vec, tid, NTHR);
      },
      [&](int j, int buf) {
        const int k0 = j * BK;
        float s[1][NS][4];
        acc_zero(s);
        warp_mma<T, 1, NS, false, true>(s, Qs, LD, Ks(buf), LD, warp * 16, 0, 0, DP);
        float m_new[2] = {m_run[0], m_run[1]};
        acc_pairs(s, 0, 0, [&](int r, int c, float& v0, float& v1) {
          const int qi = qw + r, kj = k0 + c;
          v0 = (kj <= qi && kj < T_len) ? v0 * p.scale_log2 : -INFINITY;
          v1 = (kj + 1 <= qi && kj + 1 < T_len) ? v1 * p.scale_log2 : -INFINITY;
          m_new[r >> 3] = fmaxf(m_new[r >> 3], fmaxf(v0, v1));
        });
        float corr[2], base_max[2];
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          m_new[hf] = quad_max(m_new[hf]);
          base_max[hf] = m_new[hf] == -INFINITY ? 0.f : m_new[hf];
          corr[hf] = exp2f(m_run[hf] - base_max[hf]);
          m_run[hf] = m_new[hf];
          l_run[hf] *= corr[hf];
        }
        acc_pairs(s, 0, 0, [&](int r, int c, float& v0, float& v1) {
          v0 = exp2f(v0 - base_max[r >> 3]);
          v1 = exp2f(v1 - base_max[r >> 3]);
          l_run[r >> 3] += v0 + v1;
          store2(Pw + r * LDP + c, v0, v1);
        });
        acc_pairs(o, 0, 0, [&](int r, int, float& v0, float& v1) {
          v0 *= corr[r >> 3];
          v1 *= corr[r >> 3];
        });
        __syncwarp();
        warp_mma<T, 1, NO, false, false>(o, Pw, LDP, Vs(buf), LDV, 0, 0, 0, BK);
        __syncwarp();
      });

  float inv[2];
#pragma unroll
  for (int hf = 0; hf < 2; ++hf) {
    const float l = quad_sum(l_run[hf]);
    inv[hf] = 1.f / l;
    if ((lane & 3) == 0 && blockIdx.z == 0) {  // every part forms the same lse; the first writes it
      const int qi = qw + (lane >> 2) + 8 * hf;
      if (qi < T_len) p.lse_out[static_cast<int64_t>(bh) * T_len + qi] = m_run[hf] * kLn2 + logf(l);
    }
  }
  // The warp's own 16 rows of the Q tile become its output staging area.
  T* Ow = Qs + warp * 16 * LD;
  acc_pairs(o, 0, 0, [&](int r, int c, float& v0, float& v1) {
    store2(Ow + r * LD + c, v0 * inv[r >> 3], v1 * inv[r >> 3]);
  });
  __syncwarp();
  store_tile(p.o + base + static_cast<int64_t>(qw) * d + c0, d, Ow, LD, max(0, min(16, T_len - qw)), dvw, p.vec,
             lane, 32);
}

// ---- backward: dQ (and D) ------------------------------------------------------------------------

template <typename T, int DP>
__global__ void __launch_bounds__(Cfg<T, DP>::kDqWarps * 32) flash_dq_kernel(const Params<T> p) {
  using C = Cfg<T, DP>;
  constexpr int BR = 16 * C::kDqWarps, BK = C::kDqKeys, DV = C::DV, NTHR = 32 * C::kDqWarps;
  constexpr int LD = DP + kPad<T>, LDP = BK + kPad<T>, NO = DV / 8, NS = BK / 8;
  DJ_DYNAMIC_SHARED(smem);
  const DqLayout<T, DP> lay(p.stages);
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int qt = p.tiles - 1 - static_cast<int>(blockIdx.x), bh = static_cast<int>(blockIdx.y);
  const int q0 = qt * BR, T_len = p.T_len, d = p.d;
  const int c0 = static_cast<int>(blockIdx.z) * DV, dvw = min(DV, d - c0);
  const int64_t base = static_cast<int64_t>(bh) * T_len * d;
  const int key_tiles = (min(T_len, q0 + BR) - 1) / BK + 1;
  const int qw = q0 + warp * 16;

  T* Qs = reinterpret_cast<T*>(smem + lay.q);
  T* dOs = reinterpret_cast<T*>(smem + lay.dout);
  auto Ks = [&](int buf) { return reinterpret_cast<T*>(smem + lay.k + buf * lay.stage); };
  auto Vs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.v + buf * lay.stage); };
  T* dSw = reinterpret_cast<T*>(smem + lay.ds) + warp * 16 * LDP;
  float* lse_s = reinterpret_cast<float*>(smem + lay.lse);
  float* D_s = reinterpret_cast<float*>(smem + lay.dd);

  // D_i = dO_i · O_i and the saved lse of this warp's rows (one warp reduction per row); every part
  // forms the same D, the first writes it for the dK/dV kernel.
  for (int r = 0; r < 16; ++r) {
    const int qi = qw + r;
    float dot = 0.f;
    if (qi < T_len) {
      const int64_t at = base + static_cast<int64_t>(qi) * d;
      for (int c = lane; c < d; c += 32) dot += to_f(p.dout[at + c]) * to_f(p.out[at + c]);
    }
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    if (lane == 0) {
      D_s[warp * 16 + r] = dot;
      lse_s[warp * 16 + r] = qi < T_len ? p.lse[static_cast<int64_t>(bh) * T_len + qi] * kLog2e : 0.f;
      if (qi < T_len && blockIdx.z == 0) p.D[static_cast<int64_t>(bh) * T_len + qi] = dot;
    }
  }

  float dq[1][NO][4];
  acc_zero(dq);
  tile_loop(
      key_tiles, p.stages,
      [&] {
        const int64_t at = base + static_cast<int64_t>(q0) * d;
        load_tile(Qs, LD, p.q + at, d, BR, DP, T_len - q0, d, p.vec, tid, NTHR);
        load_tile(dOs, LD, p.dout + at, d, BR, DP, T_len - q0, d, p.vec, tid, NTHR);
      },
      [&](int j, int buf) {
        const int k0 = j * BK;
        const int64_t at = base + static_cast<int64_t>(k0) * d;
        load_tile(Ks(buf), LD, p.k + at, d, BK, DP, T_len - k0, d, p.vec, tid, NTHR);
        load_tile(Vs(buf), LD, p.v + at, d, BK, DP, T_len - k0, d, p.vec, tid, NTHR);
      },
      [&](int j, int buf) {
        const int k0 = j * BK;
        float s[1][NS][4], dp[1][NS][4];
        acc_zero(s);
        acc_zero(dp);
        warp_mma<T, 1, NS, false, true>(s, Qs, LD, Ks(buf), LD, warp * 16, 0, 0, DP);
        warp_mma<T, 1, NS, false, true>(dp, dOs, LD, Vs(buf), LD, warp * 16, 0, 0, DP);
        acc_pairs2(s, dp, 0, 0, [&](int r, int c, float& s0, float& s1, float& p0, float& p1) {
          const int qi = qw + r, kj = k0 + c;
          const float lse2 = lse_s[warp * 16 + r], Dr = D_s[warp * 16 + r];
          const float P0 = (qi < T_len && kj <= qi && kj < T_len) ? exp2f(s0 * p.scale_log2 - lse2) : 0.f;
          const float P1 = (qi < T_len && kj + 1 <= qi && kj + 1 < T_len) ? exp2f(s1 * p.scale_log2 - lse2) : 0.f;
          store2(dSw + r * LDP + c, P0 * (p0 - Dr), P1 * (p1 - Dr));
        });
        __syncwarp();
        warp_mma<T, 1, NO, false, false>(dq, dSw, LDP, Ks(buf) + c0, LD, 0, 0, 0, BK);
        __syncwarp();
      });

  T* Ow = Qs + warp * 16 * LD;  // this warp's rows of Q are no longer read
  acc_pairs(dq, 0, 0, [&](int r, int c, float& v0, float& v1) { store2(Ow + r * LD + c, v0 * p.scale, v1 * p.scale); });
  __syncwarp();
  store_tile(p.dq + base + static_cast<int64_t>(qw) * d + c0, d, Ow, LD, max(0, min(16, T_len - qw)), dvw, p.vec,
             lane, 32);
}

// ---- backward: dK, dV ----------------------------------------------------------------------------

template <typename T, int DP>
__global__ void __launch_bounds__(Cfg<T, DP>::kKvWarps * 32) flash_dkdv_kernel(const Params<T> p) {
  using C = Cfg<T, DP>;
  constexpr int BQ = C::kKvQ, BKV = 16 * C::kKvWarps, DV = C::DV, NTHR = 32 * C::kKvWarps;
  constexpr int LD = DP + kPad<T>, LDP = BQ + kPad<T>, NO = DV / 8, NQ = BQ / 8;
  DJ_DYNAMIC_SHARED(smem);
  const DkvLayout<T, DP> lay(p.stages);
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31;
  const int k0 = static_cast<int>(blockIdx.x) * BKV, bh = static_cast<int>(blockIdx.y);
  const int T_len = p.T_len, d = p.d;
  const int c0 = static_cast<int>(blockIdx.z) * DV, dvw = min(DV, d - c0);
  const int64_t base = static_cast<int64_t>(bh) * T_len * d;
  const int first = k0 / BQ, count = (T_len + BQ - 1) / BQ - first;
  const int kw = k0 + warp * 16;

  T* Ks = reinterpret_cast<T*>(smem + lay.k);
  T* Vs = reinterpret_cast<T*>(smem + lay.v);
  auto Qs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.q + buf * lay.stage); };
  auto dOs = [&](int buf) { return reinterpret_cast<T*>(smem + lay.dout + buf * lay.stage); };
  auto lse_s = [&](int buf) { return reinterpret_cast<float*>(smem + lay.lse + buf * lay.stage_f); };
  auto D_s = [&](int buf) { return reinterpret_cast<float*>(smem + lay.dd + buf * lay.stage_f); };
  T* Pw = reinterpret_cast<T*>(smem + lay.p) + warp * 16 * LDP;
  T* dSw = reinterpret_cast<T*>(smem + lay.ds) + warp * 16 * LDP;

  float dk[1][NO][4], dv[1][NO][4];
  acc_zero(dk);
  acc_zero(dv);
  tile_loop(
      count, p.stages,
      [&] {
        const int64_t at = base + static_cast<int64_t>(k0) * d;
        load_tile(Ks, LD, p.k + at, d, BKV, DP, T_len - k0, d, p.vec, tid, NTHR);
        load_tile(Vs, LD, p.v + at, d, BKV, DP, T_len - k0, d, p.vec, tid, NTHR);
      },
      [&](int i, int buf) {
        const int qs0 = (first + i) * BQ;
        const int64_t at = base + static_cast<int64_t>(qs0) * d;
        load_tile(Qs(buf), LD, p.q + at, d, BQ, DP, T_len - qs0, d, p.vec, tid, NTHR);
        load_tile(dOs(buf), LD, p.dout + at, d, BQ, DP, T_len - qs0, d, p.vec, tid, NTHR);
        for (int r = tid; r < BQ; r += NTHR) {
          const bool ok = qs0 + r < T_len;
          const int64_t row = static_cast<int64_t>(bh) * T_len + qs0 + r;
          lse_s(buf)[r] = ok ? p.lse[row] * kLog2e : 0.f;
          D_s(buf)[r] = ok ? p.D[row] : 0.f;
        }
      },
      [&](int i, int buf) {
        const int qs0 = (first + i) * BQ;
        const float* lse2 = lse_s(buf);
        const float* Dq = D_s(buf);
        float st[1][NQ][4], dpt[1][NQ][4];
        acc_zero(st);
        acc_zero(dpt);
        warp_mma<T, 1, NQ, false, true>(st, Ks, LD, Qs(buf), LD, warp * 16, 0, 0, DP);
        warp_mma<T, 1, NQ, false, true>(dpt, Vs, LD, dOs(buf), LD, warp * 16, 0, 0, DP);
        acc_pairs2(st, dpt, 0, 0, [&](int r, int c, float& s0, float& s1, float& p0, float& p1) {
          const int kj = kw + r, qi = qs0 + c;
          const bool key_ok = kj < T_len;
          const float P0 = (key_ok && kj <= qi && qi < T_len) ? exp2f(s0 * p.scale_log2 - lse2[c]) : 0.f;
          const float P1 = (key_ok && kj <= qi + 1 && qi + 1 < T_len) ? exp2f(s1 * p.scale_log2 - lse2[c + 1]) : 0.f;
          store2(Pw + r * LDP + c, P0, P1);
          store2(dSw + r * LDP + c, P0 * (p0 - Dq[c]), P1 * (p1 - Dq[c + 1]));
        });
        __syncwarp();
        warp_mma<T, 1, NO, false, false>(dv, Pw, LDP, dOs(buf) + c0, LD, 0, 0, 0, BQ);
        warp_mma<T, 1, NO, false, false>(dk, dSw, LDP, Qs(buf) + c0, LD, 0, 0, 0, BQ);
        __syncwarp();
      });

  // The warp's own 16 rows of K and V become its output staging areas.
  T* Kw = Ks + warp * 16 * LD;
  T* Vw = Vs + warp * 16 * LD;
  acc_pairs2(dk, dv, 0, 0, [&](int r, int c, float& k0v, float& k1v, float& v0, float& v1) {
    store2(Kw + r * LD + c, k0v * p.scale, k1v * p.scale);
    store2(Vw + r * LD + c, v0, v1);
  });
  __syncwarp();
  const int rows = max(0, min(16, T_len - kw));
  const int64_t at = base + static_cast<int64_t>(kw) * d + c0;
  store_tile(p.dk + at, d, Kw, LD, rows, dvw, p.vec, lane, 32);
  store_tile(p.dv + at, d, Vw, LD, rows, dvw, p.vec, lane, 32);
}

// ---- host side -------------------------------------------------------------------------------------

template <typename Layout>
int pick_stages(const char* op) {
  const size_t limit = max_shared_optin();
  if (Layout(2).bytes <= limit) return 2;
  require(Layout(1).bytes <= limit, op, "does not fit in shared memory");
  return 1;
}

void check_args(const char* op, int64_t BH, int64_t T_len, int64_t d) {
  require(BH >= 0 && T_len >= 0, op, "invalid shape");
  require(d >= 1 && d <= kMaxHeadDim, op, ("d must be in 1.." + std::to_string(kMaxHeadDim)).c_str());
  require(BH <= 65535, op, "BH must be <= 65535");
  require(T_len <= (int64_t{1} << 30), op, "sequence too long");
}

template <typename T>
Params<T> make_params(int64_t T_len, int64_t d, float scale) {
  Params<T> p{};
  p.T_len = static_cast<int>(T_len);
  p.d = static_cast<int>(d);
  p.scale = scale;
  p.scale_log2 = scale * kLog2e;
  return p;
}

// grid.z: the parts of DV output columns.
template <int DP>
unsigned parts(int d) {
  constexpr int DV = DP > 128 ? 128 : DP;
  return static_cast<unsigned>((d + DV - 1) / DV);
}

template <typename T, int DP>
void launch_forward(Params<T> p, int64_t BH, cudaStream_t stream) {
  const char* op = "causal_attention_forward";
  constexpr int BR = 16 * Cfg<T, DP>::kFwdWarps;
  p.stages = pick_stages<FwdLayout<T, DP>>(op);
  p.tiles = (p.T_len + BR - 1) / BR;
  const size_t bytes = FwdLayout<T, DP>(p.stages).bytes;
  auto kernel = flash_forward_kernel<T, DP>;
  allow_shared(kernel, bytes);
  launch("flash_forward_kernel", kernel,
         dim3(static_cast<unsigned>(p.tiles), static_cast<unsigned>(BH), parts<DP>(p.d)), BR * 2, bytes, stream, p);
}

template <typename T, int DP>
void launch_backward(Params<T> p, int64_t BH, cudaStream_t stream) {
  const char* op = "causal_attention_backward";
  {
    constexpr int BR = 16 * Cfg<T, DP>::kDqWarps;
    p.stages = pick_stages<DqLayout<T, DP>>(op);
    p.tiles = (p.T_len + BR - 1) / BR;
    const size_t bytes = DqLayout<T, DP>(p.stages).bytes;
    auto kernel = flash_dq_kernel<T, DP>;
    allow_shared(kernel, bytes);
    launch("flash_dq_kernel", kernel,
           dim3(static_cast<unsigned>(p.tiles), static_cast<unsigned>(BH), parts<DP>(p.d)), BR * 2, bytes, stream,
           p);
  }
  {
    constexpr int BKV = 16 * Cfg<T, DP>::kKvWarps;
    p.stages = pick_stages<DkvLayout<T, DP>>(op);
    p.tiles = (p.T_len + BKV - 1) / BKV;
    const size_t bytes = DkvLayout<T, DP>(p.stages).bytes;
    auto kernel = flash_dkdv_kernel<T, DP>;
    allow_shared(kernel, bytes);
    launch("flash_dkdv_kernel", kernel,
           dim3(static_cast<unsigned>(p.tiles), static_cast<unsigned>(BH), parts<DP>(p.d)), BKV * 2, bytes, stream,
           p);
  }
}

}  // namespace

template <typename T>
void causal_attention_forward(T* o, float* lse, const T* q, const T* k, const T* v, int64_t BH, int64_t T_len,
                              int64_t d, float scale, cudaStream_t stream) {
  check_args("causal_attention_forward", BH, T_len, d);
  if (BH == 0 || T_len == 0) return;
  Params<T> p = make_params<T>(T_len, d, scale);
  p.o = o;
  p.lse_out = lse;
  p.q = q;
  p.k = k;
  p.v = v;
  p.vec = d % kVec<T> == 0 && aligned16(o) && aligned16(q) && aligned16(k) && aligned16(v);
  if (d <= 64)
    launch_forward<T, 64>(p, BH, stream);
  else if (d <= 128)
    launch_forward<T, 128>(p, BH, stream);
  else
    launch_forward<T, 256>(p, BH, stream);
}

template <typename T>
void causal_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* o,
                               const float* lse, int64_t BH, int64_t T_len, int64_t d, float scale,
                               cudaStream_t stream) {
  check_args("causal_attention_backward", BH, T_len, d);
  if (BH == 0 || T_len == 0) return;
  Params<T> p = make_params<T>(T_len, d, scale);
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.dout = dout;
  p.q = q;
  p.k = k;
  p.v = v;
  p.out = o;
  p.lse = lse;
  p.vec = d % kVec<T> == 0 && aligned16(dq) && aligned16(dk) && aligned16(dv) && aligned16(dout) &&
          aligned16(q) && aligned16(k) && aligned16(v);
  DJ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&p.D), static_cast<size_t>(BH * T_len) * sizeof(float),
                                stream));
  try {
    if (d <= 64)
      launch_backward<T, 64>(p, BH, stream);
    else if (d <= 128)
      launch_backward<T, 128>(p, BH, stream);
    else
      launch_backward<T, 256>(p, BH, stream);
  } catch (...) {
    cudaFreeAsync(p.D, stream);
    throw;
  }
  DJ_CUDA_CHECK(cudaFreeAsync(p.D, stream));
}

#define DJ_INSTANTIATE(T)                                                                                     \
  template void causal_attention_forward<T>(T*, float*, const T*, const T*, const T*, int64_t, int64_t,     \
                                            int64_t, float, cudaStream_t);                                    \
  template void causal_attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*,  \
                                             const float*, int64_t, int64_t, int64_t, float, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(__nv_bfloat16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
