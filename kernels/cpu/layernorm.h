// LayerNorm over the last dimension (biased variance), as torch.nn.LayerNorm.
#pragma once
#include <cstdint>

namespace dj::cpu {

// y = (x - mean) * rstd * w + b per row; mean and rstd [rows] are saved for the backward.
template <typename T>
void layernorm_forward(T* y, T* mean, T* rstd, const T* x, const T* w, const T* b, int64_t rows,
                       int64_t channels, double eps);

// dx += d/dx, dw += d/dw, db += d/db (all accumulate); any of the three may be null to skip it.
template <typename T>
void layernorm_backward(T* dx, T* dw, T* db, const T* dy, const T* x, const T* w, const T* mean,
                        const T* rstd, int64_t rows, int64_t channels);

}  // namespace dj::cpu
