#include "kernels/cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <vector>

#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layout.h"
#include "kernels/cpu/vector_exp.h"

namespace dj::cpu {

namespace {

// Tile sizes. A tile is kBlockQ query rows by up to kMaxBlockK key rows, and each of its
// products is one small OpenBLAS GEMM of kBlockQ x block_k x d. At d = 64, T = 512..4096,
// 64 x 64 measured as fast as any of 32..128, and keeps a thread's two score-sized tiles
// (2 x 16 KiB in float) in L1/L2 beside the Q/K/V/dO rows they read. BLAS tiles beat
// auto-vectorised loops by 2x with OpenBLAS's baseline (Prescott) kernels and by 8x with its
// AVX-512 ones: our generic x86-64 build cannot use the wide vector units itself.
constexpr int64_t kBlockQ = 64;
constexpr int64_t kMaxBlockK = 64;
// OpenBLAS's pthread build (0.3.x) hands a GEMM to its own thread pool once M*N*K exceeds
// 65536 * 4, which from inside our OpenMP region oversubscribed the cores (3x slower at d = 128),
// so for d > 64 the key tiles narrow to keep every tile product at or below that size. The OpenMP
// build linked now runs a product called inside a parallel region on the calling thread; the
// tiling is kept, as the tile sizes fix the order of the sums (and so the results).
constexpr int64_t kBlasSingleThreadWork = 65536 * 4;
constexpr int64_t kMinBlockK = 8;

// Problems with fewer causal multiply-adds than this (per Q K^T product) run on one thread.
constexpr int64_t kParallelWork = 1 << 20;

int64_t blocks(int64_t n, int64_t block) { return (n + block - 1) / block; }

// Geometry of one (query block, key block) tile of one head.
struct Tile {
  int64_t q0, nq;  // first query row, number of query rows
  int64_t k0, nk;  // first key row, number of key rows
  // Number of keys of query row r that the causal mask keeps (0 when the tile lies above the
  // diagonal for that row, nk when the whole row is visible).
  int64_t visible(int64_t r) const { return std::clamp<int64_t>(q0 + r - k0 + 1, 0, nk); }
};

// How a head of T_len rows is cut into tiles, and which tiles the causal mask leaves non-empty.
struct Tiling {
  int64_t T_len;
  int64_t block_k;  // key rows per tile

  int64_t query_blocks() const { return blocks(T_len, kBlockQ); }
  int64_t key_blocks() const { return blocks(T_len, block_k); }
  // Key blocks 0..last_key_block(qb) hold keys at or before the last query of block qb.
  int64_t last_key_block(int64_t qb) const {
    return (std::min(T_len, (qb + 1) * kBlockQ) - 1) / block_k;
  }
  // Query blocks first_query_block(kb).. hold queries at or after the first key of block kb.
  int64_t first_query_block(int64_t kb) const { return kb * block_k / kBlockQ; }
  Tile tile(int64_t qb, int64_t kb) const {
    const int64_t q0 = qb * kBlockQ;
    const int64_t k0 = kb * block_k;
    return {q0, std::min(kBlockQ, T_len - q0), k0, std::min(block_k, T_len - k0)};
  }
};

Tiling tiling_for(int64_t T_len, int64_t d) {
  const int64_t per_key_row = kBlockQ * std::max<int64_t>(d, 1);
  return {T_len, std::clamp(kBlasSingleThreadWork / per_key_row, kMinBlockK, kMaxBlockK)};
}

// P[nq, nk] = exp(scale * Q K^T - lse) with masked entries set to 0: the attention probabilities
// of the tile, recomputed from the saved log-sum-exp.
template <typename T>
void recompute_probabilities(T* P, const Tile& tile, const T* q, const T* k, const T* lse,
                             int64_t d, T scale) {
  gemm<T>(false, true, tile.nq, tile.nk, d, scale, q + tile.q0 * d, k + tile.k0 * d, T(0), P);
  for (int64_t r = 0; r < tile.nq; ++r) {
    T* row = P + r * tile.nk;
    const T row_lse = lse[tile.q0 + r];
    const int64_t visible = tile.visible(r);
    exp_shifted(row, visible, row_lse, row);
    std::fill(row + visible, row + tile.nk, T(0));
  }
}

// dS = P o (dO V^T - D), overwriting dP: the gradient of the loss with respect to the scaled
// scores, where D[i] = dO_i . O_i is the softmax-backward correction of row i.
template <typename T>
void score_gradient(T* dS, const T* P, const Tile& tile, const T* dout, const T* v, const T* D,
                    int64_t d) {
  gemm<T>(false, true, tile.nq, tile.nk, d, T(1), dout + tile.q0 * d, v + tile.k0 * d, T(0), dS);
  for (int64_t r = 0; r < tile.nq; ++r) {
    const T Dr = D[tile.q0 + r];
    T* ds_row = dS + r * tile.nk;
    const T* p_row = P + r * tile.nk;
    for (int64_t j = 0; j < tile.nk; ++j) ds_row[j] = p_row[j] * (ds_row[j] - Dr);
  }
}

// The forward for the rows of one query block of one head: streams over the key blocks at or
// below the diagonal, keeping a running row maximum m and running sum l of exp(score - m), and
// rescaling the partial output whenever m grows (the online softmax).
template <typename T>
void forward_query_block(T* o, T* lse, const T* q, const T* k, const T* v, int64_t qb,
                         const Tiling& tiling, int64_t d, T scale, std::vector<T>& S) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T running_max[kBlockQ];
  T running_sum[kBlockQ];
  const Tile first = tiling.tile(qb, 0);
  std::fill(running_max, running_max + first.nq, neg_inf);
  std::fill(running_sum, running_sum + first.nq, T(0));
  T* out = o + first.q0 * d;
  std::fill(out, out + first.nq * d, T(0));

  for (int64_t kb = 0; kb <= tiling.last_key_block(qb); ++kb) {
    const Tile tile = tiling.tile(qb, kb);
    gemm<T>(false, true, tile.nq, tile.nk, d, scale, q + tile.q0 * d, k + tile.k0 * d, T(0),
            S.data());
    for (int64_t r = 0; r < tile.nq; ++r) {
      T* row = S.data() + r * tile.nk;
      const int64_t visible = tile.visible(r);
      if (visible == 0) {  // the row ends before this key block starts
        std::fill(row, row + tile.nk, T(0));
        continue;
      }
      const T new_max = std::max(running_max[r], row_max(row, visible));
      const T sum = static_cast<T>(exp_shifted(row, visible, new_max, row));
      std::fill(row + visible, row + tile.nk, T(0));
      // exp(-inf) = 0 on the first visible tile: the empty partial output is simply replaced.
      const T correction = std::exp(running_max[r] - new_max);
      running_sum[r] = running_sum[r] * correction + sum;
      running_max[r] = new_max;
      if (correction != T(1)) {
        T* out_row = out + r * d;
        for (int64_t e = 0; e < d; ++e) out_row[e] *= correction;
      }
    }
    gemm<T>(false, false, tile.nq, d, tile.nk, T(1), S.data(), v + tile.k0 * d, T(1), out);
  }

  for (int64_t r = 0; r < first.nq; ++r) {
    const T inv = T(1) / running_sum[r];
    T* out_row = out + r * d;
    for (int64_t e = 0; e < d; ++e) out_row[e] *= inv;
    lse[first.q0 + r] = running_max[r] + std::log(running_sum[r]);
  }
}

// Per-thread scratch of the backward: the probability and score-gradient tiles.
template <typename T>
struct BackwardScratch {
  std::vector<T> P = std::vector<T>(kBlockQ * kMaxBlockK);
  std::vector<T> dS = std::vector<T>(kBlockQ * kMaxBlockK);
};

// Pointers of one head for the backward (all offsets already applied).
template <typename T>
struct HeadGrad {
  T *dq, *dk, *dv;
  const T *dout, *q, *k, *v, *lse, *D;
};

// dK and dV of one key block: every query block at or below the diagonal contributes, in order.
template <typename T>
void backward_key_block(const HeadGrad<T>& h, int64_t kb, const Tiling& tiling, int64_t d, T scale,
                        BackwardScratch<T>& s, bool also_dq) {
  for (int64_t qb = tiling.first_query_block(kb); qb < tiling.query_blocks(); ++qb) {
    const Tile tile = tiling.tile(qb, kb);
    recompute_probabilities(s.P.data(), tile, h.q, h.k, h.lse, d, scale);
    score_gradient(s.dS.data(), s.P.data(), tile, h.dout, h.v, h.D, d);
    gemm<T>(true, false, tile.nk, d, tile.nq, T(1), s.P.data(), h.dout + tile.q0 * d, T(1),
            h.dv + tile.k0 * d);
    gemm<T>(true, false, tile.nk, d, tile.nq, scale, s.dS.data(), h.q + tile.q0 * d, T(1),
            h.dk + tile.k0 * d);
    if (also_dq)
      gemm<T>(false, false, tile.nq, d, tile.nk, scale, s.dS.data(), h.k + tile.k0 * d, T(1),
              h.dq + tile.q0 * d);
  }
}

// dQ of one query block: every key block at or below the diagonal contributes, in order.
template <typename T>
void backward_query_block(const HeadGrad<T>& h, int64_t qb, const Tiling& tiling, int64_t d,
                          T scale, BackwardScratch<T>& s) {
  for (int64_t kb = 0; kb <= tiling.last_key_block(qb); ++kb) {
    const Tile tile = tiling.tile(qb, kb);
    recompute_probabilities(s.P.data(), tile, h.q, h.k, h.lse, d, scale);
    score_gradient(s.dS.data(), s.P.data(), tile, h.dout, h.v, h.D, d);
    gemm<T>(false, false, tile.nq, d, tile.nk, scale, s.dS.data(), h.k + tile.k0 * d, T(1),
            h.dq + tile.q0 * d);
  }
}

}  // namespace

template <typename T>
void causal_attention_forward(T* o, T* lse, const T* q, const T* k, const T* v, int64_t BH,
                              int64_t T_len, int64_t d, T scale) {
  const Tiling tiling = tiling_for(T_len, d);
  const int64_t query_blocks = tiling.query_blocks();
  // Every (head, query block) is independent. Later query blocks see more keys, so blocks are
  // dealt out dynamically, longest first; each output row is still computed by one fixed
  // sequence of operations, whatever thread runs it. The team starts even for little work: the
  // tiles' products then run inside it, single-threaded, instead of each starting a team of its
  // own (which, for many small tiles, cost far more than the tiles).
#pragma omp parallel
  {
    std::vector<T> S(kBlockQ * kMaxBlockK);
#pragma omp for schedule(dynamic)
    for (int64_t task = 0; task < BH * query_blocks; ++task) {
      const int64_t bh = task % BH;
      const int64_t qb = query_blocks - 1 - task / BH;
      const int64_t head = bh * T_len * d;
      forward_query_block(o + head, lse + bh * T_len, q + head, k + head, v + head, qb, tiling, d,
                          scale, S);
    }
  }
}

template <typename T>
void causal_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                               const T* v, const T* o, const T* lse, int64_t BH, int64_t T_len,
                               int64_t d, T scale) {
  const int64_t n = BH * T_len;
  fill_zero(dq, n * d);
  fill_zero(dk, n * d);
  fill_zero(dv, n * d);
  // D[i] = dO_i . O_i, summed in double (every entry is written below).
  std::unique_ptr<T[]> D(new T[static_cast<size_t>(n)]);
#pragma omp parallel for schedule(static) if (n * d > kParallelWork)
  for (int64_t i = 0; i < n; ++i) {
    double sum = 0.0;
    for (int64_t e = 0; e < d; ++e)
      sum += static_cast<double>(dout[i * d + e]) * static_cast<double>(o[i * d + e]);
    D[static_cast<size_t>(i)] = static_cast<T>(sum);
  }

  auto head = [&](int64_t bh) {
    const int64_t off = bh * T_len * d;
    return HeadGrad<T>{dq + off, dk + off, dv + off,         dout + off,           q + off,
                       k + off,  v + off,  lse + bh * T_len, D.get() + bh * T_len};
  };
  const Tiling tiling = tiling_for(T_len, d);
  const int64_t key_blocks = tiling.key_blocks();
  const int64_t query_blocks = tiling.query_blocks();

  // With at least one head per thread, each thread takes whole heads and computes every tile
  // once (FlashAttention-2 order: key blocks outer, dQ accumulated across them). With fewer heads
  // than threads, dK/dV are parallel over key blocks and dQ, in a second sweep that recomputes
  // the tiles, over query blocks. Both ways every gradient row is accumulated by the same
  // sequence of operations, so the result is bit-identical for any thread count.
  const bool parallel = BH * T_len * T_len * d / 2 > kParallelWork;
  if (!parallel || BH >= omp_get_max_threads()) {
#pragma omp parallel  // for little work too: see causal_attention_forward
    {
      BackwardScratch<T> scratch;
#pragma omp for schedule(dynamic)
      for (int64_t bh = 0; bh < BH; ++bh)
        for (int64_t kb = 0; kb < key_blocks; ++kb)
          backward_key_block(head(bh), kb, tiling, d, scale, scratch, true);
    }
  } else {
#pragma omp parallel
    {
      BackwardScratch<T> scratch;
      // Longest tasks first: early key blocks and late query blocks meet the most tiles.
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < BH * key_blocks; ++task)
        backward_key_block(head(task % BH), task / BH, tiling, d, scale, scratch, false);
#pragma omp for schedule(dynamic)
      for (int64_t task = 0; task < BH * query_blocks; ++task)
        backward_query_block(head(task % BH), query_blocks - 1 - task / BH, tiling, d, scale,
                             scratch);
    }
  }
}

#define DJ_INSTANTIATE(T)                                                                        \
  template void causal_attention_forward<T>(T*, T*, const T*, const T*, const T*, int64_t,       \
                                            int64_t, int64_t, T);                                \
  template void causal_attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, \
                                             const T*, const T*, int64_t, int64_t, int64_t, T);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
