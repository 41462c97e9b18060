#include "kernels/cpu/cross_entropy.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/vector_exp.h"

namespace dj::cpu {

namespace {

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

}  // namespace

template <typename T>
CrossEntropyResult softmax_cross_entropy(T* logits, const int32_t* targets, int64_t rows,
                                         int64_t vocab, bool write_gradient, T grad_scale) {
  // Validate before any row is overwritten, and outside the parallel region (an exception may
  // not leave an OpenMP region).
  CrossEntropyResult result;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] >= vocab)
      fail("cross entropy: target {} at row {} is outside the vocabulary [0, {})", targets[r], r,
           vocab);
    if (targets[r] >= 0) ++result.count;
  }

  // Per-row losses are summed serially afterwards, so loss_sum is independent of the schedule.
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
#pragma omp parallel for schedule(static) if (rows * vocab > kParallelThreshold)
  for (int64_t r = 0; r < rows; ++r) {
    T* row = logits + r * vocab;
    const int32_t target = targets[r];
    if (target < 0) {
      if (write_gradient) std::fill(row, row + vocab, T(0));
      continue;
    }
    // Softmax shifted by the row maximum: every exponent is <= 0, so nothing overflows.
    const T max = row_max(row, vocab);
    const double shifted_target = static_cast<double>(row[target]) - static_cast<double>(max);
    // With a gradient, exp(row - max) stays in the row, so the gradient is one rescale away (one
    // exp per logit); without one, the logits are left as they are.
    const double sum = exp_shifted(row, vocab, max, write_gradient ? row : nullptr);
    if (write_gradient) {
      const T scale = static_cast<T>(static_cast<double>(grad_scale) / sum);
      for (int64_t j = 0; j < vocab; ++j) row[j] *= scale;
      row[target] -= grad_scale;
    }
    row_loss[static_cast<size_t>(r)] = std::log(sum) - shifted_target;
  }
  for (const double loss : row_loss) result.loss_sum += loss;
  return result;
}

template <typename T>
CrossEntropyResult distill_cross_entropy(T* logits, const T* teacher, const int32_t* targets, int64_t rows,
                                         int64_t vocab, bool write_gradient, T grad_scale, double weight,
                                         double temperature) {
  if (!(temperature > 0)) fail("distillation: the temperature must be positive, got {}", temperature);
  CrossEntropyResult result;
  for (int64_t r = 0; r < rows; ++r) {
    if (targets[r] >= vocab)
      fail("cross entropy: target {} at row {} is outside the vocabulary [0, {})", targets[r], r, vocab);
    if (targets[r] >= 0) ++result.count;
  }
  const bool scaled = temperature != 1.0;
  const T inv_tau = static_cast<T>(1.0 / temperature);
  std::vector<double> row_loss(static_cast<size_t>(rows), 0.0);
#pragma omp parallel if (rows * vocab > kParallelThreshold)
  {
    // exp(z − max z), exp(t/τ − max), and with τ ≠ 1 also z/τ, t/τ and exp(z/τ − max).
    std::vector<T> pz(static_cast<size_t>(vocab)), pt(pz.size()), zs(scaled ? pz.size() : 0),
        ts(scaled ? pz.size() : 0), ps(scaled ? pz.size() : 0);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      T* row = logits + r * vocab;
      const T* trow = teacher + r * vocab;
      const int32_t target = targets[r];
      if (target < 0) {
        if (write_gradient) std::fill(row, row + vocab, T(0));
        continue;
      }
      const T max = row_max(row, vocab);
      const double sum = exp_shifted(row, vocab, max, pz.data());
      const T* t_tau = trow;
      const T* z_tau = row;
      if (scaled) {
        for (int64_t j = 0; j < vocab; ++j) {
          ts[static_cast<size_t>(j)] = trow[j] * inv_tau;
          zs[static_cast<size_t>(j)] = row[j] * inv_tau;
        }
        t_tau = ts.data();
        z_tau = zs.data();
      }
      const T t_max = row_max(t_tau, vocab);
      const double t_sum = exp_shifted(t_tau, vocab, t_max, pt.data());
      T s_max = max;
      double s_sum = sum;
      const T* ps_row = pz.data();
      if (scaled) {
        s_max = row_max(z_tau, vocab);
        s_sum = exp_shifted(z_tau, vocab, s_max, ps.data());
        ps_row = ps.data();
      }
      // KL = Σ p_t (t/τ − z/τ) − log Σ exp(t/τ) + log Σ exp(z/τ), with Σ p_t = 1.
      double cross = 0.0;
      for (int64_t j = 0; j < vocab; ++j)
        cross += static_cast<double>(pt[static_cast<size_t>(j)]) *
                 (static_cast<double>(t_tau[j]) - static_cast<double>(z_tau[j]));
      const double kl = cross / t_sum - (static_cast<double>(t_max) + std::log(t_sum)) +
                        (static_cast<double>(s_max) + std::log(s_sum));
      const double ce = std::log(sum) - (static_cast<double>(row[target]) - static_cast<double>(max));
      row_loss[static_cast<size_t>(r)] = ce + weight * temperature * temperature * kl;
      if (write_gradient) {
        const T a = static_cast<T>(static_cast<double>(grad_scale) / sum);
        const T b = static_cast<T>(static_cast<double>(grad_scale) * weight * temperature / s_sum);
        const T c = static_cast<T>(static_cast<double>(grad_scale) * weight * temperature / t_sum);
        for (int64_t j = 0; j < vocab; ++j) {
          const auto k = static_cast<size_t>(j);
          row[j] = a * pz[k] + b * ps_row[k] - c * pt[k];
        }
        row[target] -= grad_scale;
      }
    }
  }
  for (const double loss : row_loss) result.loss_sum += loss;
  return result;
}

template <typename T>
double squared_error(T* grad, const T* a, const T* b, int64_t n, T grad_scale) {
  const int64_t blocks = (n + kSquaredErrorBlock - 1) / kSquaredErrorBlock;
  std::vector<double> partial(static_cast<size_t>(std::max<int64_t>(blocks, 0)), 0.0);
#pragma omp parallel for schedule(static) if (blocks > 1)
  for (int64_t k = 0; k < blocks; ++k) {
    const int64_t end = std::min(n, (k + 1) * kSquaredErrorBlock);
    double sum = 0.0;
    for (int64_t i = k * kSquaredErrorBlock; i < end; ++i) {
      const T diff = a[i] - b[i];
      sum += static_cast<double>(diff) * static_cast<double>(diff);
      if (grad != nullptr) grad[i] = grad_scale * diff;
    }
    partial[static_cast<size_t>(k)] = sum;
  }
  double total = 0.0;
  for (const double s : partial) total += s;
  return total;
}

#define DJ_INSTANTIATE(T)                                                                          \
  template CrossEntropyResult softmax_cross_entropy<T>(T*, const int32_t*, int64_t, int64_t, bool, \
                                                       T);                                          \
  template double squared_error<T>(T*, const T*, const T*, int64_t, T);                           \
  template CrossEntropyResult distill_cross_entropy<T>(T*, const T*, const int32_t*, int64_t, int64_t, bool, T, \
                                                       double, double);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
