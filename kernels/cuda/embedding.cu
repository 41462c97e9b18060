// Token embedding: gather forward, deterministic sort-free scatter-add backward.
//
// Forward: grid-stride over the n * channels output values, 256 threads a block, 16 bytes per
// access when channels is a multiple of the pack and both pointers are 16-byte aligned (each pack
// then lies inside one row). Traffic: read n rows of the table, write n rows of out. An id outside
// [0, vocab) writes zeros (the CPU op throws; a kernel cannot).
//
// Backward: dtable[ids[i], :] += dout[i, :] must add repeated ids in ascending i to be
// deterministic (and to equal the CPU op bit for bit). Instead of sorting, each of up to 512 blocks
// owns a contiguous range of vocabulary rows and walks all n ids in chunks of 256 (one id per
// thread): a warp ballot + per-warp counts in shared memory compact the positions whose id falls in
// the block's range into a list that keeps ascending i; then the whole block adds those dout rows,
// in list order, to its table rows (thread c owns columns c, c + 256, ...). No two blocks touch the
// same table row, and within a block every element of a row is updated by one thread, in order:
// no atomics, no races. Cost: every block reads all ids (n * 4 bytes, from L2 after the first
// block: 32 KB at n = 8192, 16 MB over 512 blocks), plus one read of each dout row and a
// read-modify-write of its table row, which is the floor. Skewed id distributions serialise in the
// owning block (a token repeated k times costs k row updates there); typical text spreads them.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

using detail::load_pack;
using detail::Pack;
using detail::store_pack;
using detail::to_f32;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxBackwardBlocks = 512;

template <typename T, int V>
__global__ void __launch_bounds__(kThreads)
    embedding_forward_kernel(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab,
                             int64_t channels) {
  const int64_t packs_per_row = channels / V;  // the host picks V dividing channels
  const int64_t total = n * packs_per_row;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; p < total;
       p += stride) {
    const int64_t i = p / packs_per_row;
    const int64_t c = (p - i * packs_per_row) * V;
    const int32_t id = ids[i];
    Pack<T, V> value;
    if (id >= 0 && id < vocab) {
      value = load_pack<V>(table + static_cast<int64_t>(id) * channels + c);
    } else {
#pragma unroll
      for (int k = 0; k < V; ++k) value.v[k] = detail::from_f32<T>(0.0f);
    }
    store_pack<V>(out + i * channels + c, value);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    embedding_backward_kernel(float* dtable, const T* dout, const int32_t* ids, int64_t n,
                              int64_t vocab, int64_t channels, int64_t rows_per_block) {
  __shared__ int32_t s_pos[kThreads];  // offset (from the chunk start) of each match, ascending
  __shared__ int32_t s_id[kThreads];
  __shared__ int32_t s_warp_count[kWarps];
  const int64_t v0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t v1 = v0 + rows_per_block < vocab ? v0 + rows_per_block : vocab;
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;

  // The loop bounds are the same for every thread: the barriers below are never divergent.
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t i = base + threadIdx.x;
    const int32_t id = i < n ? ids[i] : -1;
    const bool hit = i < n && id >= v0 && id < v1;
    const unsigned mask = __ballot_sync(0xffffffffu, hit);
    if (lane == 0) s_warp_count[warp] = __popc(mask);
    __syncthreads();
    int offset = 0;
    int total = 0;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const int count = s_warp_count[w];
      if (w < warp) offset += count;
      total += count;
    }
    if (hit) {
      const int slot = offset + __popc(mask & ((1u << lane) - 1u));
      s_pos[slot] = threadIdx.x;
      s_id[slot] = id;
    }
    __syncthreads();
    for (int m = 0; m < total; ++m) {
      const T* src = dout + (base + s_pos[m]) * channels;
      float* dst = dtable + static_cast<int64_t>(s_id[m]) * channels;
      for (int64_t c = threadIdx.x; c < channels; c += kThreads) dst[c] += to_f32(src[c]);
    }
    __syncthreads();  // s_pos, s_id and s_warp_count are rewritten by the next chunk
  }
}

}  // namespace

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab,
                       int64_t channels, cudaStream_t stream) {
  if (n <= 0 || channels <= 0) return;
  constexpr int V = detail::kVec16<T>;
  if (channels % V == 0 && detail::aligned(out, 16) && detail::aligned(table, 16))
    launch("embedding_forward_kernel", embedding_forward_kernel<T, V>,
           detail::grid_for(n * (channels / V), kThreads), kThreads, 0, stream, out, ids, table, n, vocab,
           channels);
  else
    launch("embedding_forward_kernel", embedding_forward_kernel<T, 1>, detail::grid_for(n * channels, kThreads),
           kThreads, 0, stream, out, ids, table, n, vocab, channels);
}

template <typename T>
void embedding_backward(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                        int64_t channels, cudaStream_t stream) {
  if (n <= 0 || channels <= 0 || vocab <= 0) return;
  const int64_t blocks = std::min<int64_t>(vocab, kMaxBackwardBlocks);
  const int64_t rows_per_block = (vocab + blocks - 1) / blocks;
  const int64_t grid = (vocab + rows_per_block - 1) / rows_per_block;
  launch("embedding_backward_kernel", embedding_backward_kernel<T>, static_cast<unsigned>(grid), kThreads, 0,
         stream, dtable, dout, ids, n, vocab, channels, rows_per_block);
}

#define DJ_INSTANTIATE(T)                                                                     \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int64_t, int64_t, int64_t, \
                                     cudaStream_t);                                           \
  template void embedding_backward<T>(float*, const T*, const int32_t*, int64_t, int64_t,     \
                                      int64_t, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(bf16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
