// AdamW on flat buffers (decoupled weight decay, as torch.optim.AdamW), global-norm gradient
// clipping, and Pythia's learning-rate schedule (docs/pythia.md, section 1).
#pragma once
#include <cstdint>
#include <vector>

namespace dj {

struct AdamWConfig {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
};

// One AdamW step over n values, as torch.optim.AdamW (foreach=False) computes it for float32
// (same operation order, fused multiply-adds where torch's CPU kernels fuse; bit-identical in
// tests): p -= lr * weight_decay * p (where decay[i] != 0), then
// m = β1 m + (1 − β1) g, v = β2 v + (1 − β2) g², p -= lr * m̂ / (sqrt(v̂) + eps) with bias
// corrections for `step` (1-based). `decay` marks the values that take weight decay (biases,
// norms and 1-D tensors do not); `update` (may be null) marks the values that train at all —
// frozen values keep p, m and v unchanged. Deterministic for any thread count.
void adamw_step(float* params, float* m, float* v, const float* grads, const uint8_t* decay, const uint8_t* update,
                int64_t n, int64_t step, double lr, const AdamWConfig& config);

// Σ g² accumulated in double, deterministic for any thread count; global_norm is its root.
double sum_of_squares(const float* grads, int64_t n);
double global_norm(const float* grads, int64_t n);
// torch.nn.utils.clip_grad_norm_: scales grads by max_norm / (norm + 1e-6) when that is below 1;
// returns the factor applied (1 if none). `norm` must be finite.
double clip_by_global_norm(float* grads, int64_t n, double norm, double max_norm);

// Pythia / GPT-NeoX schedule: warmup lr·max(1, n)/W for n <= W, then
// min_lr + (lr − min_lr)/2 · (cos(π (n − W)/(E − W)) + 1) up to E, min_lr after.
double learning_rate(int64_t step, double lr, double min_lr, int64_t warmup_steps, int64_t total_steps);

}  // namespace dj
