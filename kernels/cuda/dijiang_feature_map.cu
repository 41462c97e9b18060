// DiJiang feature map on the GPU (docs/method.md, section 2 steps 3-4, section 4):
// s = softmax(x · P) over the d features of each row, its backward, and the optional learned
// per-head feature weights phi = w[h] ⊙ s.
//
// feature_map_forward / _backward: blocks of 8 warps; P (d x d fp32, zero-padded to DP = 64 or 128)
// is staged once per block in shared memory, then every warp walks 16-row tiles of x on its own
// (grid-stride, only __syncwarp inside the loop). Per tile: 16 x d rows by cp.async into the warp's
// shared slot, one warp_mma 16 x DP x DP (bf16: P is split into hi + lo bf16 halves, two
// mma.sync passes, so P keeps ~16 mantissa bits and z = x · P is fp32-accurate for bf16 x;
// fp32: FFMA), the softmax on the accumulators (a row lives in the 4 lanes of a quad: max and sum
// by two xor-shuffles), and the result staged in the same slot for 16-byte coalesced stores.
// Shared memory: P 2 x 128 x 136 x 2 B = 68 KB + 8 x 4.3 KB (bf16, d = 128): 2 blocks per SM.
// Registers: the 16 x DP accumulator tile (64 fp32 per thread at d = 128); ptxas ~128, no spills.
// The backward forms dz = s ⊙ (ds − ⟨s, ds⟩) in fp32 (two lanes per row), rounds it to T for the
// product dz · Pᵀ (B operand read transposed from the same P copy).
// Cost: 2 d² FLOPs per row against 4 d bytes (bf16 in + out): 64 FLOP/B at d = 128 (128 with the
// hi/lo split) — under the ~180 FLOP/B ridge, so the floor is the memory traffic (0.11 ms for
// 2^20 rows of 128 at 4.8 TB/s).
// d = 129..256 (Pythia-1b's 256): P (256 KB in fp32 or as bf16 hi + lo) cannot stay in shared
// memory, so feature_map_wide_kernel (below) keeps a 128-row tile of x (or dz) there and streams P
// through it in slabs of 32 rows, 16 warps each computing a 32 x 64 tile of z. Shared memory: bf16
// 136 KB (128 rows, 2 stages) on sm_90 and sm_80; fp32 199 KB on sm_90 (128 rows), 132 KB on sm_80
// (64 rows, 8 warps). ptxas (sm_90): 128 registers per thread (the cap at 512 threads), fp32
// without spills, bf16 with 24-36 (backward) and 36-72 (forward) bytes of spill traffic per thread.
//
// Feature weights: elementwise; the backward reduces dw[h] over the rows of head h per block
// (fp32), then one atomicAdd per (block, feature).
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

constexpr int kFmWarps = 8;
constexpr int kFmThreads = kFmWarps * 32;

template <typename T, int DP>
constexpr size_t fm_shared_bytes(bool backward, int warps) {
  const size_t ld = DP + kPad<T>;
  const size_t p_copies = kIsBf16<T> ? 2 : 1;
  const size_t slots = backward ? 2 : 1;
  return (p_copies * DP * ld + static_cast<size_t>(warps) * slots * 16 * ld) * sizeof(T);
}

// P (fp32 [d][d]) -> shared [DP][DP + pad], zero outside d x d; bf16 as hi and lo = P − hi.
template <typename T, int DP>
__device__ __forceinline__ void stage_projection(T* Ph, T* Pl, const float* P, int d) {
  constexpr int LD = DP + kPad<T>;
  for (int idx = static_cast<int>(threadIdx.x); idx < DP * DP; idx += static_cast<int>(blockDim.x)) {
    const int k = idx / DP, j = idx - k * DP;
    const float pv = (k < d && j < d) ? P[k * d + j] : 0.f;
    if constexpr (kIsBf16<T>) {
      const bf16 hi = __float2bfloat16_rn(pv);
      Ph[k * LD + j] = hi;
      Pl[k * LD + j] = __float2bfloat16_rn(pv - __bfloat162float(hi));
    } else {
      Ph[k * LD + j] = pv;
      (void)Pl;
    }
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kFmThreads) feature_map_forward_kernel(T* s, const T* x, const float* P,
                                                                         int64_t rows, int d, bool vec) {
  constexpr int LD = DP + kPad<T>;
  constexpr int NT = DP / 8;
  DJ_DYNAMIC_SHARED(smem);
  T* Ph = reinterpret_cast<T*>(smem);
  T* Pl = kIsBf16<T> ? Ph + DP * LD : Ph;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  T* X = (kIsBf16<T> ? Pl + DP * LD : Ph + DP * LD) + warp * 16 * LD;
  stage_projection<T, DP>(Ph, Pl, P, d);
  __syncthreads();

  const int64_t tiles = (rows + 15) / 16;
  const int64_t warps = blockDim.x >> 5;
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * warps + warp; tile < tiles;
       tile += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t r0 = tile * 16;
    const int rv = rows - r0 < 16 ? static_cast<int>(rows - r0) : 16;
    load_tile(X, LD, x + r0 * d, d, 16, DP, rv, d, vec, lane, 32);
    cp_async_wait_all();
    __syncwarp();
    float acc[1][NT][4];
    acc_zero(acc);
    warp_mma<T, 1, NT, false, false>(acc, X, LD, Ph, LD, 0, 0, 0, DP);
    if constexpr (kIsBf16<T>) warp_mma<T, 1, NT, false, false>(acc, X, LD, Pl, LD, 0, 0, 0, DP);
    // Softmax over the columns < d of rows g (half 0) and g + 8 (half 1).
    float mx[2] = {-INFINITY, -INFINITY};
    acc_pairs(acc, 0, 0, [&](int r, int c, float& v0, float& v1) {
      if (c >= d) v0 = -INFINITY;
      if (c + 1 >= d) v1 = -INFINITY;
      mx[r >> 3] = fmaxf(mx[r >> 3], fmaxf(v0, v1));
    });
    float sum[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      mx[hf] = quad_max(mx[hf]);
      sum[hf] = 0.f;
    }
    acc_pairs(acc, 0, 0, [&](int r, int, float& v0, float& v1) {
      v0 = expf(v0 - mx[r >> 3]);
      v1 = expf(v1 - mx[r >> 3]);
      sum[r >> 3] += v0 + v1;
    });
    float inv[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) inv[hf] = 1.f / quad_sum(sum[hf]);
    __syncwarp();  // every lane has read X
    acc_pairs(acc, 0, 0, [&](int r, int c, float& v0, float& v1) {
      store2(X + r * LD + c, v0 * inv[r >> 3], v1 * inv[r >> 3]);
    });
    __syncwarp();
    store_tile(s + r0 * d, d, X, LD, rv, d, vec, lane, 32);
    __syncwarp();  // the stores have read X before the next tile lands there
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kFmThreads) feature_map_backward_kernel(T* dx, const T* ds, const T* s,
                                                                          const float* P, int64_t rows, int d,
                                                                          bool vec) {
  constexpr int LD = DP + kPad<T>;
  constexpr int NT = DP / 8;
  DJ_DYNAMIC_SHARED(smem);
  T* Ph = reinterpret_cast<T*>(smem);
  T* Pl = kIsBf16<T> ? Ph + DP * LD : Ph;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  T* Sx = (kIsBf16<T> ? Pl + DP * LD : Ph + DP * LD) + warp * 32 * LD;
  T* Dx = Sx + 16 * LD;
  stage_projection<T, DP>(Ph, Pl, P, d);
  __syncthreads();

  const int64_t tiles = (rows + 15) / 16;
  const int64_t warps = blockDim.x >> 5;
  for (int64_t tile = static_cast<int64_t>(blockIdx.x) * warps + warp; tile < tiles;
       tile += static_cast<int64_t>(gridDim.x) * warps) {
    const int64_t r0 = tile * 16;
    const int rv = rows - r0 < 16 ? static_cast<int>(rows - r0) : 16;
    load_tile(Sx, LD, s + r0 * d, d, 16, DP, rv, d, vec, lane, 32);
    load_tile(Dx, LD, ds + r0 * d, d, 16, DP, rv, d, vec, lane, 32);
    cp_async_wait_all();
    __syncwarp();
    // dz = s ⊙ (ds − ⟨s, ds⟩): lanes 2r and 2r + 1 share row r, half the columns each.
    {
      const int r = lane >> 1, c_begin = (lane & 1) * (DP / 2), c_end = c_begin + DP / 2;
      float dot = 0.f;
      for (int c = c_begin; c < c_end; ++c) dot += to_f(Sx[r * LD + c]) * to_f(Dx[r * LD + c]);
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      for (int c = c_begin; c < c_end; ++c) {
        const float sv = to_f(Sx[r * LD + c]);
        Dx[r * LD + c] = from_f<T>(sv * (to_f(Dx[r * LD + c]) - dot));
      }
    }
    __syncwarp();
    float acc[1][NT][4];
    acc_zero(acc);
    warp_mma<T, 1, NT, false, true>(acc, Dx, LD, Ph, LD, 0, 0, 0, DP);
    if constexpr (kIsBf16<T>) warp_mma<T, 1, NT, false, true>(acc, Dx, LD, Pl, LD, 0, 0, 0, DP);
    __syncwarp();
    acc_pairs(acc, 0, 0, [&](int r, int c, float& v0, float& v1) { store2(Sx + r * LD + c, v0, v1); });
    __syncwarp();
    store_tile(dx + r0 * d, d, Sx, LD, rv, d, vec, lane, 32);
    __syncwarp();
  }
}

template <typename T>
__global__ void feature_weights_forward_kernel(T* phi, const T* s, const float* w, int64_t total, int64_t n, int H,
                                               int d) {
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / d;
    const int j = static_cast<int>(idx - row * d);
    const int h = static_cast<int>((row / n) % H);
    phi[idx] = from_f<T>(w[h * d + j] * to_f(s[idx]));
  }
}

// Block (h, split): threads = (sub-row, feature j); rows of head h are q = 0 .. count_h * n − 1 with
// bh = h + (q / n) H, i = q % n. ds may alias dphi (each element is read, then written, by one thread).
template <typename T>
__global__ void __launch_bounds__(256) feature_weights_backward_kernel(T* ds, float* dw, const T* dphi,
                                                                       const T* s, const float* w, int64_t BH,
                                                                       int H, int64_t n, int d) {
  __shared__ float red[256];
  const int h = static_cast<int>(blockIdx.x), tid = static_cast<int>(threadIdx.x);
  const int rp = 256 / d, j = tid % d, sub = tid / d;
  const int64_t count_h = (BH - h + H - 1) / H;
  const int64_t head_rows = count_h * n;
  const float wj = w[h * d + j];
  float acc = 0.f;
  if (sub < rp) {
    for (int64_t q = static_cast<int64_t>(blockIdx.y) * rp + sub; q < head_rows;
         q += static_cast<int64_t>(gridDim.y) * rp) {
      const int64_t bh = h + (q / n) * H, i = q % n;
      const int64_t at = (bh * n + i) * d + j;
      const float g = to_f(dphi[at]);
      acc += g * to_f(s[at]);
      ds[at] = from_f<T>(wj * g);
    }
  }
  red[tid] = acc;
  __syncthreads();
  if (sub == 0) {
    for (int k = 1; k < rp; ++k) acc += red[k * d + j];
    atomicAdd(dw + h * d + j, acc);
  }
}

// ---- head sizes 129..256: P streamed through shared memory ------------------------------------------
// P (256 x 256 fp32, 256 KB; bf16 hi + lo the same) does not fit in shared memory. A block of
// RB = 128 rows (64 where that does not fit: fp32 on sm_80) keeps its A tile (x, or dz for the
// backward) in shared memory and streams B = P (forward) or Pᵀ (backward) in slabs of kWideKS rows
// of k through 2 cp.async stages (1 where 2 do not fit). Its RB / 32 x 4 warps each own a 32 x 64
// tile of z (64 fp32 accumulators per thread, as the 16 x 128 tile of the d = 128 kernel). B comes
// from a prepared copy in global memory ([copies][256][256] of T, zero-padded, bf16 as hi and lo
// halves so z stays fp32-accurate), written by fm_prepare_kernel into a stream-ordered scratch
// (256 KB) for each call: the slabs then arrive by 16-byte cp.async whatever d is, and the
// conversion is done once instead of once per block. The row softmax combines the four column
// warps of a row through shared memory (max, then sum, each in a fixed order: deterministic).
// Each block re-reads all of B per row tile, from L2: 256 KB per 128 rows (bf16 reads and writes
// 128 KB of rows), so at d = 256 the kernel is bound by L2 and the tensor cores rather than by
// device memory (2 · 2 · 256² FLOPs per row with the hi/lo split: ~260 FLOP per byte of rows).
constexpr int kWideDP = 256;
constexpr int kWideKS = 32;

template <typename T>
struct WideLayout {
  size_t x, slab, slab_bytes, red, bytes;
  __host__ __device__ WideLayout(int rb, int stages) {
    const size_t ld = kWideDP + kPad<T>;
    const size_t copies = kIsBf16<T> ? 2 : 1;
    Bump b;
    x = b.take(static_cast<size_t>(rb) * ld * sizeof(T));
    slab_bytes = copies * kWideKS * ld * sizeof(T);
    slab = b.take(static_cast<size_t>(stages) * slab_bytes);
    red = b.take(static_cast<size_t>(rb) * 4 * 2 * sizeof(float));
    bytes = b.bytes;
  }
};

// out[c][k][j] for the copies c of T (fp32: P itself; bf16: hi, then lo = P − hi) of P[k][j], or of
// P[j][k] with TRANSPOSE; zero outside d x d.
template <typename T, bool TRANSPOSE>
__global__ void fm_prepare_kernel(T* out, const float* P, int d) {
  constexpr int N = kWideDP * kWideDP;
  for (int idx = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x); idx < N;
       idx += static_cast<int>(gridDim.x * blockDim.x)) {
    const int k = idx / kWideDP, j = idx - k * kWideDP;
    const float pv = (k < d && j < d) ? (TRANSPOSE ? P[j * d + k] : P[k * d + j]) : 0.f;
    if constexpr (kIsBf16<T>) {
      const bf16 hi = __float2bfloat16_rn(pv);
      out[idx] = hi;
      out[N + idx] = __float2bfloat16_rn(pv - __bfloat162float(hi));
    } else {
      out[idx] = pv;
    }
  }
}

// Forward (BACKWARD = false): out = softmax(in · P) with in = x. Backward: out = dz · Pᵀ with
// dz = s ⊙ (ds − ⟨s, ds⟩), in = ds. B: the prepared P (or Pᵀ). blockDim.x = 4 · rb.
template <typename T, bool BACKWARD>
__global__ void __launch_bounds__(512, 1) feature_map_wide_kernel(T* out, const T* in, const T* s, const T* B,
                                                                  int64_t rows, int d, int stages, bool vec) {
  constexpr int LD = kWideDP + kPad<T>;
  DJ_DYNAMIC_SHARED(smem);
  const int nthr = static_cast<int>(blockDim.x), rb = nthr / 4;
  const WideLayout<T> lay(rb, stages);
  const int tid = static_cast<int>(threadIdx.x), warp = tid >> 5, lane = tid & 31, nwarps = nthr >> 5;
  const int row0 = (warp >> 2) * 32, col0 = (warp & 3) * 64, cg = warp & 3;
  T* X = reinterpret_cast<T*>(smem + lay.x);
  auto slab = [&](int buf, int copy) {
    return reinterpret_cast<T*>(smem + lay.slab + buf * lay.slab_bytes) + copy * kWideKS * LD;
  };
  float* red_max = reinterpret_cast<float*>(smem + lay.red);
  float* red_sum = red_max + rb * 4;
  const int slabs = (d + kWideKS - 1) / kWideKS;
  auto issue = [&](int k, int buf) {
    const T* src = B + static_cast<int64_t>(k) * kWideKS * kWideDP;
    load_tile(slab(buf, 0), LD, src, kWideDP, kWideKS, kWideDP, kWideKS, kWideDP, true, tid, nthr);
    if constexpr (kIsBf16<T>)
      load_tile(slab(buf, 1), LD, src + kWideDP * kWideDP, kWideDP, kWideKS, kWideDP, kWideKS, kWideDP, true, tid, nthr);
  };

  const int64_t tiles = (rows + rb - 1) / rb;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t r0 = tile * rb;
    const int rv = rows - r0 < rb ? static_cast<int>(rows - r0) : rb;
    // The A tile: x by cp.async (lands with the first slab), or dz formed row by row, one warp a row.
    if constexpr (!BACKWARD) {
      load_tile(X, LD, in + r0 * d, d, rb, kWideDP, rv, d, vec, tid, nthr);
    } else {
      for (int r = warp; r < rb; r += nwarps) {
        float sv[kWideDP / 32], gv[kWideDP / 32];
        float dot = 0.f;
#pragma unroll
        for (int u = 0; u < kWideDP / 32; ++u) {
          const int c = lane + 32 * u;
          const bool ok = r < rv && c < d;
          sv[u] = ok ? to_f(s[(r0 + r) * d + c]) : 0.f;
          gv[u] = ok ? to_f(in[(r0 + r) * d + c]) : 0.f;
          dot += sv[u] * gv[u];
        }
        for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
#pragma unroll
        for (int u = 0; u < kWideDP / 32; ++u) X[r * LD + lane + 32 * u] = from_f<T>(sv[u] * (gv[u] - dot));
      }
    }
    float acc[2][8][4];
    acc_zero(acc);
    if (stages == 2) {
      issue(0, 0);
      cp_async_commit();
    }
    for (int k = 0; k < slabs; ++k) {
      const int buf = stages == 2 ? (k & 1) : 0;
      if (stages == 1) {
        __syncthreads();  // every warp is done with the previous slab
        issue(k, 0);
        cp_async_commit();
      }
      cp_async_wait_all();
      __syncthreads();  // slab k (and the A tile) visible; slab k − 1 finished everywhere
      if (stages == 2 && k + 1 < slabs) {
        issue(k + 1, buf ^ 1);
        cp_async_commit();
      }
      const T* A = X + k * kWideKS;
      warp_mma<T, 2, 8, false, false>(acc, A, LD, slab(buf, 0), LD, row0, col0, 0, kWideKS);
      if constexpr (kIsBf16<T>) warp_mma<T, 2, 8, false, false>(acc, A, LD, slab(buf, 1), LD, row0, col0, 0, kWideKS);
    }
    const int g = lane >> 2;
    if constexpr (!BACKWARD) {
      // Softmax over the columns < d of each row: the accumulator rows of this thread are
      // row0 + 8 q + g, q = 0..3 (acc_pairs' row r has q = (r − row0) / 8).
      float mx[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
      acc_pairs(acc, row0, col0, [&](int r, int c, float& v0, float& v1) {
        if (c >= d) v0 = -INFINITY;
        if (c + 1 >= d) v1 = -INFINITY;
        const int q = (r - row0) >> 3;
        mx[q] = fmaxf(mx[q], fmaxf(v0, v1));
      });
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        mx[q] = quad_max(mx[q]);
        if ((lane & 3) == 0) red_max[(row0 + 8 * q + g) * 4 + cg] = mx[q];
      }
      __syncthreads();  // also: every warp is done reading X
      float sum[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float* m4 = red_max + (row0 + 8 * q + g) * 4;
        mx[q] = fmaxf(fmaxf(m4[0], m4[1]), fmaxf(m4[2], m4[3]));
        sum[q] = 0.f;
      }
      acc_pairs(acc, row0, col0, [&](int r, int, float& v0, float& v1) {
        const int q = (r - row0) >> 3;
        v0 = expf(v0 - mx[q]);
        v1 = expf(v1 - mx[q]);
        sum[q] += v0 + v1;
      });
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        sum[q] = quad_sum(sum[q]);
        if ((lane & 3) == 0) red_sum[(row0 + 8 * q + g) * 4 + cg] = sum[q];
      }
      __syncthreads();
      float inv[4];
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float* s4 = red_sum + (row0 + 8 * q + g) * 4;
        inv[q] = 1.f / (((s4[0] + s4[1]) + s4[2]) + s4[3]);
      }
      acc_pairs(acc, row0, col0, [&](int r, int c, float& v0, float& v1) {
        const int q = (r - row0) >> 3;
        store2(X + r * LD + c, v0 * inv[q], v1 * inv[q]);
      });
    } else {
      __syncthreads();  // every warp is done reading X
      acc_pairs(acc, row0, col0, [&](int r, int c, float& v0, float& v1) { store2(X + r * LD + c, v0, v1); });
    }
    __syncthreads();
    store_tile(out + r0 * d, d, X, LD, rv, d, vec, tid, nthr);
    __syncthreads();  // the stores have read X before the next tile lands there
  }
}

template <typename T, bool BACKWARD>
void launch_fm_wide(T* out, const T* in, const T* s, const float* P, int64_t rows, int d, bool vec,
                    cudaStream_t stream) {
  const char* op = BACKWARD ? "feature_map_backward" : "feature_map_forward";
  // The largest configuration that fits: 128 rows and 2 stages, then fewer stages, then 64 rows.
  int rb = 0, stages = 0;
  const size_t limit = max_shared_optin();
  for (const int r : {128, 64}) {
    for (const int st : {2, 1})
      if (rb == 0 && WideLayout<T>(r, st).bytes <= limit) {
        rb = r;
        stages = st;
      }
  }
  require(rb > 0, op, "does not fit in shared memory");
  const size_t bytes = WideLayout<T>(rb, stages).bytes;
  auto kernel = feature_map_wide_kernel<T, BACKWARD>;
  allow_shared(kernel, bytes);
  int per_sm = 0;
  DJ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, 4 * rb, bytes));
  const int64_t tiles = (rows + rb - 1) / rb;
  const int blocks =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(tiles, int64_t{std::max(per_sm, 1)} * sm_count())));

  const size_t copies = kIsBf16<T> ? 2 : 1;
  T* prepared = nullptr;
  DJ_CUDA_CHECK(cudaMallocAsync(reinterpret_cast<void**>(&prepared), copies * kWideDP * kWideDP * sizeof(T), stream));
  try {
    launch("fm_prepare_kernel", fm_prepare_kernel<T, BACKWARD>, 64, 256, 0, stream, prepared, P, d);
    launch(BACKWARD ? "feature_map_wide_backward_kernel" : "feature_map_wide_forward_kernel", kernel, blocks,
           4 * rb, bytes, stream, out, in, s, static_cast<const T*>(prepared), rows, d, stages, vec);
  } catch (...) {
    cudaFreeAsync(prepared, stream);
    throw;
  }
  DJ_CUDA_CHECK(cudaFreeAsync(prepared, stream));
}

void check_rows(const char* op, int64_t rows, int64_t d) {
  require(rows >= 0, op, "rows must be >= 0");
  require(d >= 1 && d <= kMaxHeadDim, op, ("d must be in 1.." + std::to_string(kMaxHeadDim)).c_str());
}

// Launch shape: 8 warps per block, 4 when that does not fit in shared memory (fp32, d > 64, backward
// on sm_80); as many blocks as fit on the device at once, or fewer when there are fewer tiles.
struct FmLaunch {
  int warps = kFmWarps, blocks = 1;
  size_t bytes = 0;
};
template <typename T, int DP, typename Kernel>
FmLaunch fm_launch(Kernel* kernel, bool backward, int64_t rows, const char* op) {
  FmLaunch l;
  l.bytes = fm_shared_bytes<T, DP>(backward, l.warps);
  if (l.bytes > max_shared_optin()) {
    l.warps = kFmWarps / 2;
    l.bytes = fm_shared_bytes<T, DP>(backward, l.warps);
  }
  require(l.bytes <= max_shared_optin(), op, "does not fit in shared memory");
  allow_shared(kernel, l.bytes);
  int per_sm = 0;
  DJ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, l.warps * 32, l.bytes));
  const int64_t tiles = (rows + 15) / 16;
  const int64_t want = (tiles + l.warps - 1) / l.warps;
  l.blocks = static_cast<int>(
      std::max<int64_t>(1, std::min<int64_t>(want, int64_t{std::max(per_sm, 1)} * sm_count())));
  return l;
}

template <typename T, int DP>
void launch_fm_forward(T* s, const T* x, const float* P, int64_t rows, int d, bool vec, cudaStream_t stream) {
  auto kernel = feature_map_forward_kernel<T, DP>;
  const FmLaunch l = fm_launch<T, DP>(kernel, false, rows, "feature_map_forward");
  launch("feature_map_forward_kernel", kernel, l.blocks, l.warps * 32, l.bytes, stream, s, x, P, rows, d, vec);
}

template <typename T, int DP>
void launch_fm_backward(T* dx, const T* ds, const T* s, const float* P, int64_t rows, int d, bool vec,
                        cudaStream_t stream) {
  auto kernel = feature_map_backward_kernel<T, DP>;
  const FmLaunch l = fm_launch<T, DP>(kernel, true, rows, "feature_map_backward");
  launch("feature_map_backward_kernel", kernel, l.blocks, l.warps * 32, l.bytes, stream, dx, ds, s, P, rows, d,
         vec);
}

}  // namespace

template <typename T>
void feature_map_forward(T* s, const T* x, const float* P, int64_t rows, int64_t d, cudaStream_t stream) {
  check_rows("feature_map_forward", rows, d);
  if (rows == 0) return;
  const bool vec = d % kVec<T> == 0 && aligned16(s) && aligned16(x);
  if (d <= 64)
    launch_fm_forward<T, 64>(s, x, P, rows, static_cast<int>(d), vec, stream);
  else if (d <= 128)
    launch_fm_forward<T, 128>(s, x, P, rows, static_cast<int>(d), vec, stream);
  else
    launch_fm_wide<T, false>(s, x, nullptr, P, rows, static_cast<int>(d), vec, stream);
}

template <typename T>
void feature_map_backward(T* dx, const T* ds, const T* s, const float* P, int64_t rows, int64_t d,
                          cudaStream_t stream) {
  check_rows("feature_map_backward", rows, d);
  if (rows == 0) return;
  const bool vec = d % kVec<T> == 0 && aligned16(dx) && aligned16(ds) && aligned16(s);
  if (d <= 64)
    launch_fm_backward<T, 64>(dx, ds, s, P, rows, static_cast<int>(d), vec, stream);
  else if (d <= 128)
    launch_fm_backward<T, 128>(dx, ds, s, P, rows, static_cast<int>(d), vec, stream);
  else
    launch_fm_wide<T, true>(dx, ds, s, P, rows, static_cast<int>(d), vec, stream);
}

template <typename T>
void feature_weights_forward(T* phi, const T* s, const float* w, int64_t BH, int64_t H, int64_t n, int64_t d,
                             cudaStream_t stream) {
  const char* op = "feature_weights_forward";
  require(BH >= 0 && H >= 1 && n >= 0, op, "invalid shape");
  require(d >= 1 && d <= kMaxHeadDim, op, ("d must be in 1.." + std::to_string(kMaxHeadDim)).c_str());
  const int64_t total = BH * n * d;
  if (total == 0) return;
  const int64_t blocks = std::min<int64_t>((total + 255) / 256, int64_t{sm_count()} * 8);
  launch("feature_weights_forward_kernel", feature_weights_forward_kernel<T>, static_cast<unsigned>(blocks), 256, 0,
         stream, phi, s, w, total, n, static_cast<int>(H), static_cast<int>(d));
}

template <typename T>
void feature_weights_backward(T* ds, float* dw, const T* dphi, const T* s, const float* w, int64_t BH, int64_t H,
                              int64_t n, int64_t d, cudaStream_t stream) {
  const char* op = "feature_weights_backward";
  require(BH >= 0 && H >= 1 && n >= 0, op, "invalid shape");
  require(d >= 1 && d <= kMaxHeadDim, op, ("d must be in 1.." + std::to_string(kMaxHeadDim)).c_str());
  require(H <= 65535, op, "H must be <= 65535");
  if (BH * n == 0) return;
  const int64_t heads_with_rows = std::min(H, BH);
  const int64_t rows_per_head = (BH + H - 1) / H * n;
  const int64_t rp = 256 / d;
  const int64_t splits = std::max<int64_t>(
      1, std::min<int64_t>({(rows_per_head + rp - 1) / rp, 65535, int64_t{sm_count()} * 4 / heads_with_rows + 1}));
  const dim3 grid(static_cast<unsigned>(heads_with_rows), static_cast<unsigned>(splits));
  launch("feature_weights_backward_kernel", feature_weights_backward_kernel<T>, grid, 256, 0, stream, ds, dw, dphi,
         s, w, BH, static_cast<int>(H), n, static_cast<int>(d));
}

#define DJ_INSTANTIATE(T)                                                                                       \
  template void feature_map_forward<T>(T*, const T*, const float*, int64_t, int64_t, cudaStream_t);           \
  template void feature_map_backward<T>(T*, const T*, const T*, const float*, int64_t, int64_t, cudaStream_t); \
  template void feature_weights_forward<T>(T*, const T*, const float*, int64_t, int64_t, int64_t, int64_t,    \
                                           cudaStream_t);                                                     \
  template void feature_weights_backward<T>(T*, float*, const T*, const T*, const float*, int64_t, int64_t,   \
                                            int64_t, int64_t, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(__nv_bfloat16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
