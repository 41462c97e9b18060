#include "trainer/model/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "kernels/core/error.h"

namespace dj {

Sampler::Sampler(const SamplingOptions& options) : options_(options), rng_(options.seed) {
  if (options.greedy) return;
  if (!(options.temperature > 0.0) || !std::isfinite(options.temperature))
    fail("--temperature must be a positive number, got {}", options.temperature);
  if (options.top_k < 0) fail("--top-k must be 0 (no limit) or positive, got {}", options.top_k);
  if (!(options.top_p > 0.0 && options.top_p <= 1.0)) fail("--top-p must lie in (0, 1], got {}", options.top_p);
}

int32_t Sampler::next(const double* logits, int64_t vocab) {
  if (vocab < 1) fail("sampling from an empty vocabulary");
  if (options_.greedy) return static_cast<int32_t>(std::max_element(logits, logits + vocab) - logits);
  // Candidates by decreasing logit, ties by increasing id.
  order_.resize(static_cast<size_t>(vocab));
  std::iota(order_.begin(), order_.end(), 0);
  const auto before = [logits](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); };
  const int64_t k = options_.top_k > 0 ? std::min(options_.top_k, vocab) : vocab;
  std::partial_sort(order_.begin(), order_.begin() + k, order_.end(), before);
  order_.resize(static_cast<size_t>(k));
  // Softmax of logits / temperature over the candidates, in double.
  weights_.resize(order_.size());
  const double top = logits[order_[0]] / options_.temperature;
  double total = 0.0;
  for (size_t i = 0; i < order_.size(); ++i) {
    weights_[i] = std::exp(logits[order_[i]] / options_.temperature - top);
    total += weights_[i];
  }
  // Nucleus: the shortest prefix whose probability reaches top_p (at least one token).
  size_t keep = order_.size();
  if (options_.top_p < 1.0) {
    double cumulative = 0.0;
    for (size_t i = 0; i < order_.size(); ++i) {
      cumulative += weights_[i] / total;
      if (cumulative >= options_.top_p) {
        keep = i + 1;
        break;
      }
    }
    total = std::accumulate(weights_.begin(), weights_.begin() + static_cast<std::ptrdiff_t>(keep), 0.0);
  }
  // A uniform double in [0, 1) from the top 53 bits, scaled to the kept mass.
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53 * total;
  double cumulative = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    cumulative += weights_[i];
    if (u < cumulative) return order_[i];
  }
  return order_[keep - 1];
}

}  // namespace dj
