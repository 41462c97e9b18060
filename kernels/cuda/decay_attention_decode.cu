// The decoding step of the decayed attention on the GPU: S = γ S + fkᵀ v, o = fq · S for one token
// of each sequence, the fp32 state updated in place (the recurrent form, one step). Design of the
// training kernels: decay_attention_chunks.cuh.
#include "kernels/cuda/decay_attention_chunks.cuh"

namespace dj::cuda {

namespace {

using namespace decay;

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

}  // namespace

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

template void decay_attention_step<float>(float*, float*, const float*, const float*, const float*, const float*,
                                          int64_t, int64_t, int64_t, int64_t, cudaStream_t);
template void decay_attention_step<__nv_bfloat16>(__nv_bfloat16*, float*, const __nv_bfloat16*, const __nv_bfloat16*,
                                                  const __nv_bfloat16*, const float*, int64_t, int64_t, int64_t,
                                                  int64_t, cudaStream_t);

}  // namespace dj::cuda
