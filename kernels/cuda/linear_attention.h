// CUDA versions of the linear-attention baselines' feature maps and normalisation
// (kernels/cpu/linear_attention.h, the reference: the same functions, layouts and arguments).
// Conventions are kernels/cuda/dijiang_attention.h's: device pointers, work queued on `stream`,
// activations T = float or __nv_bfloat16 with fp32 arithmetic and one rounding on store, the
// performer's projection P fp32, invalid arguments thrown as std::invalid_argument. Every output is
// deterministic.
//
// Header for nvcc and for the host compiler alike (no CUDA-only syntax).
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/linear_attention.h"

namespace dj::cuda {

using cpu::LinearFeatureMap;

// f = φ(x): x [BH, n, d], f [BH, n, m], m = cpu::linear_feature_count(map, d) <= 256; P [d, m] for
// the performer (else unused). One block per row: the row of x in shared memory, a thread per
// feature (the performer's ω_j·x' reads P's column j from global memory, cached in L2).
template <typename T>
void linear_feature_forward(T* f, const T* x, const float* P, LinearFeatureMap map, bool query, int64_t BH, int64_t n,
                            int64_t d, int64_t position0, int64_t horizon, cudaStream_t stream);
// dx from df, f = φ(x) and x (overwrites dx); the performer's query shift has no gradient.
template <typename T>
void linear_feature_backward(T* dx, const T* df, const T* f, const T* x, const float* P, LinearFeatureMap map,
                             bool query, int64_t BH, int64_t n, int64_t d, int64_t position0, int64_t horizon,
                             cudaStream_t stream);

// vx = [v, 1] ([rows, dv] -> [rows, dv + 1]); v = vx without its last column; o = ox[:, :dv] / den
// (0 where den = ox[:, dv] <= 0); dox = [dout / den, −⟨dout, o⟩ / den]. Grid-stride, a thread per
// value (a warp per row for the backward's inner product).
template <typename T>
void append_ones(T* vx, const T* v, int64_t rows, int64_t dv, cudaStream_t stream);
template <typename T>
void drop_last_column(T* v, const T* vx, int64_t rows, int64_t dv, cudaStream_t stream);
template <typename T>
void normalize_rows_forward(T* o, const T* ox, int64_t rows, int64_t dv, cudaStream_t stream);
template <typename T>
void normalize_rows_backward(T* dox, const T* dout, const T* o, const T* ox, int64_t rows, int64_t dv,
                             cudaStream_t stream);

}  // namespace dj::cuda
