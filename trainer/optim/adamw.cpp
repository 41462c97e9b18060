#include "trainer/optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <numbers>

namespace dj {

namespace {

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;
// global_norm sums squares in blocks of this many values, each block sequentially, then the block
// sums in block order: the grouping depends only on n, so the result does not depend on the
// number of threads.
constexpr int64_t kNormBlock = 4096;

// torch's lerp(start, end, w) (ATen Lerp.h, vectorised as one fma): start + w·(end − start) for
// |w| < 0.5, else end − (1 − w)·(end − start), so that each form has the smaller coefficient.
inline float lerp_toward(float start, float end, float weight) {
  return std::abs(weight) < 0.5f ? std::fma(weight, end - start, start)
                                 : std::fma(weight - 1.0f, end - start, end);
}

}  // namespace

// Reproduces torch.optim.AdamW's single-tensor path (torch/optim/adam.py, _single_tensor_adam) on
// float32 tensors operation by operation. The scalars are computed in double as Python does, and
// rounded to float where torch's CPU kernels convert them (a Python scalar meets a float tensor as
// a float). Where torch's CPU kernels fuse a multiply-add (lerp_ and addcmul_; checked against
// torch 2.15 on AVX512), std::fma does the same; everything else rounds after each operation, in
// torch's order:
//   p.mul_(1 - lr·wd)                            p = p · f(1 − lr·wd)
//   exp_avg.lerp_(g, 1 − β1)                     m = fma(f(1 − β1), g − m, m)   (β1 > 0.5)
//   exp_avg_sq.mul_(β2).addcmul_(g, g, 1 − β2)   v = fma(f(1 − β2) · g, g, v · f(β2))
//   denom = (v.sqrt() / bc2 ** 0.5).add_(eps)    d = sqrt(v) / f(bc2 ** 0.5) + f(eps)
//   p.addcdiv_(m, denom, value=-lr/bc1)          p = p + (f(−lr/bc1) · m) / d
// torch's CPU sqrt (MKL) is not always correctly rounded (up to 1% of the fixture's values are an
// ulp low); std::sqrt is. That ulp in d moves the update by ~1e-7 of itself, far below an ulp of
// p, so the results still agree bitwise on the fixture (tests/unit/test_adamw.cpp).
void adamw_step(float* params, float* m, float* v, const float* grads, const uint8_t* decay,
                const uint8_t* update, int64_t n, int64_t step, double lr, const AdamWConfig& config) {
  const double bias_correction1 = 1.0 - std::pow(config.beta1, static_cast<double>(step));
  const double bias_correction2 = 1.0 - std::pow(config.beta2, static_cast<double>(step));
  const float decay_factor = static_cast<float>(1.0 - lr * config.weight_decay);
  const float m_weight = static_cast<float>(1.0 - config.beta1);
  const float v_keep = static_cast<float>(config.beta2);
  const float v_weight = static_cast<float>(1.0 - config.beta2);
  const float neg_step_size = static_cast<float>(-(lr / bias_correction1));
  const float bias_correction2_sqrt = static_cast<float>(std::pow(bias_correction2, 0.5));
  const float eps = static_cast<float>(config.eps);

#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) {
    if (update != nullptr && update[i] == 0) continue;
    float p = params[i];
    const float g = grads[i];
    if (decay[i] != 0) p *= decay_factor;
    const float mi = lerp_toward(m[i], g, m_weight);
    const float vi = std::fma(v_weight * g, g, v[i] * v_keep);
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    params[i] = p + (neg_step_size * mi) / denom;
    m[i] = mi;
    v[i] = vi;
  }
}

double sum_of_squares(const float* grads, int64_t n) {
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(blocks, 0)), 0.0);
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t end = std::min(n, (b + 1) * kNormBlock);
    double sum = 0.0;
    // A float squared is exact in double (48 significant bits), so only the additions round.
    for (int64_t i = b * kNormBlock; i < end; ++i) {
      const double g = grads[i];
      sum += g * g;
    }
    partial[static_cast<size_t>(b)] = sum;
  }
  double total = 0.0;
  for (const double sum : partial) total += sum;
  return total;
}

double global_norm(const float* grads, int64_t n) { return std::sqrt(sum_of_squares(grads, n)); }

// torch.nn.utils.clip_grad_norm_ semantics: clip_coef = max_norm / (norm + 1e-6), clamped to at
// most 1, grads multiplied by it. Multiplying by a clamped 1 changes nothing, so grads are only
// touched when clip_coef < 1, i.e. when norm exceeds max_norm by more than the 1e-6 guard. The
// factor is rounded to float, as torch multiplies float gradients by a float coefficient; that
// rounded factor is what is returned. A NaN norm fails the comparison and leaves grads unscaled:
// callers must check the norm is finite before stepping.
double clip_by_global_norm(float* grads, int64_t n, double norm, double max_norm) {
  const double clip_coef = max_norm / (norm + 1e-6);
  if (!(clip_coef < 1.0)) return 1.0;
  const float factor = static_cast<float>(clip_coef);
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
  for (int64_t i = 0; i < n; ++i) grads[i] *= factor;
  return static_cast<double>(factor);
}

// Warmup applies only when warmup_steps > 0 (with none, step 0 is already on the cosine, at lr);
// after total_steps — and whenever total_steps <= warmup_steps leaves no cosine span — the rate
// stays at min_lr.
double learning_rate(int64_t step, double lr, double min_lr, int64_t warmup_steps,
                     int64_t total_steps) {
  if (warmup_steps > 0 && step <= warmup_steps)
    return lr * static_cast<double>(std::max<int64_t>(1, step)) /
           static_cast<double>(warmup_steps);
  if (step >= total_steps) return min_lr;
  // Same operation order as the formula in Python (π·(n − W) first), so the values agree bitwise.
  const double angle = std::numbers::pi * static_cast<double>(step - warmup_steps) /
                       static_cast<double>(total_steps - warmup_steps);
  return min_lr + (lr - min_lr) / 2.0 * (std::cos(angle) + 1.0);
}

}  // namespace dj
