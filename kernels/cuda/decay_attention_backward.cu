// The backward of the chunkwise decayed attention on the GPU: three roles (dq, dk, dv) in one
// launch, in one or two passes over column blocks for head sizes above 128, and the gradient of
// log γ. Design: decay_attention_chunks.cuh.
#include "kernels/cuda/decay_attention_chunks.cuh"

namespace dj::cuda {

namespace {

using namespace decay;

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

template void decay_attention_backward<float>(float*, float*, float*, float*, const float*, const float*, const float*,
                                              const float*, const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                              int64_t, cudaStream_t);
template void decay_attention_backward<__nv_bfloat16>(__nv_bfloat16*, __nv_bfloat16*, __nv_bfloat16*, float*,
                                                      const __nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
                                                      const __nv_bfloat16*, const float*, int64_t, int64_t, int64_t,
                                                      int64_t, int64_t, int64_t, cudaStream_t);

}  // namespace dj::cuda
