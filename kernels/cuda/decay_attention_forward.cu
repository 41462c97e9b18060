// The forward of the chunkwise decayed attention on the GPU, and the state after a prefix (the
// same kernel, writing the final state instead of the outputs). Design: decay_attention_chunks.cuh.
#include "kernels/cuda/decay_attention_chunks.cuh"

namespace dj::cuda {

namespace {

using namespace decay;

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

template void decay_attention_forward<float>(float*, const float*, const float*, const float*, const float*, int64_t,
                                             int64_t, int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template void decay_attention_forward<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*, const __nv_bfloat16*,
                                                     const __nv_bfloat16*, const float*, int64_t, int64_t, int64_t,
                                                     int64_t, int64_t, int64_t, cudaStream_t);
template void decay_attention_prefill_state<float>(float*, const float*, const float*, const float*, int64_t, int64_t,
                                                   int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template void decay_attention_prefill_state<__nv_bfloat16>(float*, const __nv_bfloat16*, const __nv_bfloat16*,
                                                           const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                                                           int64_t, cudaStream_t);

}  // namespace dj::cuda
