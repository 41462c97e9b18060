// GroupNorm fused with DiJiang's swish output gate (docs/method.md, section 2 steps
// 7-8): y = silu(g) ⊙ GN(x), GN(x) = x̂ w + b with x̂ = (x − mean) rstd per group of
// channels / groups consecutive channels (biased variance). Same meaning as
// cpu::group_norm_forward followed by cpu::silu_gate_forward, and their backwards in reverse.
//
// Forward: one block (256 threads) per row. The row is read once into shared memory (fp32), the
// group statistics come from two passes over it (mean, then squared deviations, as the CPU), each
// group reduced by a sub-warp of min(32, group size rounded down to a power of two) lanes with
// xor-shuffles (whole warps always shuffle together, idle lanes add 0), then one elementwise pass
// writes y (and GN(x) when asked). Global traffic: x and g read once, y written once
// (+ gn): 3 T values per element, the floor for this op.
// Backward: blocks stride over rows (as many as fit on the device); per row, pass 1 recomputes x̂,
// GN(x) and σ(g), writes dg, and keeps u = dgn w and x̂ in shared memory; the per-group means of u and
// u x̂ follow as in the forward; pass 2 writes dx = rstd (u − mean(u) − x̂ mean(u x̂)). dw and db are
// summed per block in shared memory (each channel owned by one thread, no races) and added to the
// global fp32 gradients with one atomicAdd per (block, channel).
// Shared memory: forward 4 (channels + 2 groups) bytes; backward 4 (4 channels + 2 groups) bytes
// (32 KB for 2048 channels); above 48 KB the launch raises the dynamic limit.
#include <algorithm>
#include <cmath>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dijiang_attention.h"
#include "kernels/cuda/dijiang_attention_device.cuh"
#include "kernels/cuda/launch.h"

namespace dj::cuda {

namespace {

using namespace attn;

constexpr int kThreads = 256;

__device__ __forceinline__ float sigmoid(float g) { return 1.f / (1.f + expf(-g)); }

// Sum over each aligned group of `width` lanes (a power of two <= 32); all 32 lanes take part.
__device__ __forceinline__ float subwarp_sum(float v, int width) {
  for (int off = width >> 1; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Calls fn(group, lane_in_group, width) for every group; within one call all lanes of a warp are
// present (lanes past the last group get group >= groups and must contribute 0).
template <typename Fn>
__device__ __forceinline__ void for_groups(int groups, int size, Fn&& fn) {
  int width = 1;
  while (width * 2 <= size && width < 32) width *= 2;
  const int per_warp = 32 / width;
  const int warp = static_cast<int>(threadIdx.x) >> 5, lane = static_cast<int>(threadIdx.x) & 31;
  const int warps = static_cast<int>(blockDim.x) >> 5;
  for (int base = warp * per_warp; base < groups; base += warps * per_warp)
    fn(base + lane / width, lane % width, width);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) group_norm_gate_forward_kernel(T* y, T* gn, float* mean, float* rstd,
                                                                           const T* x, const float* w,
                                                                           const float* b, const T* g, int channels,
                                                                           int groups, float eps) {
  DJ_DYNAMIC_SHARED(smem);
  float* xs = reinterpret_cast<float*>(smem);
  float* mean_s = xs + channels;
  float* rstd_s = mean_s + groups;
  const int64_t row = blockIdx.x;
  const int size = channels / groups;
  const T* xr = x + row * channels;
  for (int c = static_cast<int>(threadIdx.x); c < channels; c += kThreads) xs[c] = to_f(xr[c]);
  __syncthreads();
  for_groups(groups, size, [&](int grp, int li, int width) {
    const bool active = grp < groups;
    const float* xg = xs + (active ? grp : 0) * size;
    float sum = 0.f;
    if (active)
      for (int c = li; c < size; c += width) sum += xg[c];
    const float mu = subwarp_sum(sum, width) / static_cast<float>(size);
    float sq = 0.f;
    if (active)
      for (int c = li; c < size; c += width) {
        const float dev = xg[c] - mu;
        sq += dev * dev;
      }
    const float var = subwarp_sum(sq, width) / static_cast<float>(size);
    if (active && li == 0) {
      const float rs = 1.f / sqrtf(var + eps);
      mean_s[grp] = mu;
      rstd_s[grp] = rs;
      mean[row * groups + grp] = mu;
      rstd[row * groups + grp] = rs;
    }
  });
  __syncthreads();
  const T* gr = g + row * channels;
  for (int c = static_cast<int>(threadIdx.x); c < channels; c += kThreads) {
    const int grp = c / size;
    const float v = (xs[c] - mean_s[grp]) * rstd_s[grp] * w[c] + b[c];
    const float gv = to_f(gr[c]);
    y[row * channels + c] = from_f<T>(gv * sigmoid(gv) * v);
    if (gn != nullptr) gn[row * channels + c] = from_f<T>(v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) group_norm_gate_backward_kernel(T* dx, T* dg, float* dw, float* db,
                                                                            const T* dy, const T* x, const T* g,
                                                                            const float* w, const float* b,
                                                                            const float* mean, const float* rstd,
                                                                            int64_t rows, int channels, int groups) {
  DJ_DYNAMIC_SHARED(smem);
  float* us = reinterpret_cast<float*>(smem);  // u = dgn ⊙ w
  float* xh = us + channels;                   // x̂
  float* dw_s = xh + channels;
  float* db_s = dw_s + channels;
  float* um = db_s + channels;  // per-group mean(u)
  float* uxm = um + groups;     // per-group mean(u x̂)
  const int size = channels / groups;
  const float inv_size = 1.f / static_cast<float>(size);
  for (int c = static_cast<int>(threadIdx.x); c < channels; c += kThreads) {
    dw_s[c] = 0.f;
    db_s[c] = 0.f;
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const int64_t base = row * channels;
    for (int c = static_cast<int>(threadIdx.x); c < channels; c += kThreads) {
      const int grp = c / size;
      const float xhat = (to_f(x[base + c]) - mean[row * groups + grp]) * rstd[row * groups + grp];
      const float gnv = xhat * w[c] + b[c];
      const float gv = to_f(g[base + c]), dyv = to_f(dy[base + c]);
      const float sig = sigmoid(gv);
      dg[base + c] = from_f<T>(dyv * gnv * sig * (1.f + gv * (1.f - sig)));
      const float dgn = dyv * gv * sig;
      us[c] = dgn * w[c];
      xh[c] = xhat;
      dw_s[c] += dgn * xhat;
      db_s[c] += dgn;
    }
    __syncthreads();
    for_groups(groups, size, [&](int grp, int li, int width) {
      const bool active = grp < groups;
      const int c0 = (active ? grp : 0) * size;
      float su = 0.f, sux = 0.f;
      if (active)
        for (int c = li; c < size; c += width) {
          su += us[c0 + c];
          sux += us[c0 + c] * xh[c0 + c];
        }
      su = subwarp_sum(su, width);
      sux = subwarp_sum(sux, width);
      if (active && li == 0) {
        um[grp] = su * inv_size;
        uxm[grp] = sux * inv_size;
      }
    });
    __syncthreads();
    for (int c = static_cast<int>(threadIdx.x); c < channels; c += kThreads) {
      const int grp = c / size;
      dx[base + c] = from_f<T>(rstd[row * groups + grp] * (us[c] - um[grp] - xh[c] * uxm[grp]));
    }
    __syncthreads();  // us, xh, um, uxm are rewritten by the next row
  }
  for (int c = static_cast<int>(threadIdx.x); c < channels; c += kThreads) {
    atomicAdd(dw + c, dw_s[c]);
    atomicAdd(db + c, db_s[c]);
  }
}

void check_args(const char* op, int64_t rows, int64_t channels, int64_t groups) {
  require(rows >= 0 && channels >= 1, op, "invalid shape");
  require(groups >= 1 && channels % groups == 0, op, "groups must divide channels");
  require(channels <= (int64_t{1} << 20), op, "too many channels");
}

}  // namespace

template <typename T>
void group_norm_gate_forward(T* y, T* gn, float* mean, float* rstd, const T* x, const float* w, const float* b,
                             const T* g, int64_t rows, int64_t channels, int64_t groups, float eps,
                             cudaStream_t stream) {
  const char* op = "group_norm_gate_forward";
  check_args(op, rows, channels, groups);
  if (rows == 0) return;
  const size_t bytes = static_cast<size_t>(channels + 2 * groups) * sizeof(float);
  require(bytes <= max_shared_optin(), op, "row does not fit in shared memory");
  auto kernel = group_norm_gate_forward_kernel<T>;
  if (bytes > 48 * 1024) allow_shared(kernel, bytes);
  require(rows <= 0x7fffffff, op, "too many rows");
  launch("group_norm_gate_forward_kernel", kernel, static_cast<unsigned>(rows), kThreads, bytes, stream, y, gn, mean,
         rstd, x, w, b, g, static_cast<int>(channels), static_cast<int>(groups), eps);
}

template <typename T>
void group_norm_gate_backward(T* dx, T* dg, float* dw, float* db, const T* dy, const T* x, const T* g,
                              const float* w, const float* b, const float* mean, const float* rstd, int64_t rows,
                              int64_t channels, int64_t groups, cudaStream_t stream) {
  const char* op = "group_norm_gate_backward";
  check_args(op, rows, channels, groups);
  if (rows == 0) return;
  const size_t bytes = static_cast<size_t>(4 * channels + 2 * groups) * sizeof(float);
  require(bytes <= max_shared_optin(), op, "row does not fit in shared memory");
  auto kernel = group_norm_gate_backward_kernel<T>;
  if (bytes > 48 * 1024) allow_shared(kernel, bytes);
  int per_sm = 0;
  DJ_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, bytes));
  const int64_t blocks = std::min<int64_t>(rows, int64_t{std::max(per_sm, 1)} * sm_count());
  launch("group_norm_gate_backward_kernel", kernel, static_cast<unsigned>(blocks), kThreads, bytes, stream, dx, dg,
         dw, db, dy, x, g, w, b, mean, rstd, rows, static_cast<int>(channels), static_cast<int>(groups));
}

#define DJ_INSTANTIATE(T)                                                                                      \
  template void group_norm_gate_forward<T>(T*, T*, float*, float*, const T*, const float*, const float*,     \
                                           const T*, int64_t, int64_t, int64_t, float, cudaStream_t);        \
  template void group_norm_gate_backward<T>(T*, T*, float*, float*, const T*, const T*, const T*,            \
                                            const float*, const float*, const float*, const float*, int64_t, \
                                            int64_t, int64_t, cudaStream_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(__nv_bfloat16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
