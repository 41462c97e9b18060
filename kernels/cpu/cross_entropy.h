// Fused softmax + cross-entropy. The probabilities are never stored: when a gradient is asked
// for, each logits row is overwritten in place by grad_scale * (softmax(row) - onehot(target)).
#pragma once
#include <cstdint>

namespace dj::cpu {

struct CrossEntropyResult {
  double loss_sum = 0.0;  // sum of -log p(target) over counted rows, accumulated in double
  int64_t count = 0;      // rows whose target is >= 0 (negative targets are ignored)
};

// logits [rows, vocab]; targets [rows] in [0, vocab) or negative to ignore. Ignored rows get a
// zero gradient. Targets >= vocab throw dj::Error.
template <typename T>
CrossEntropyResult softmax_cross_entropy(T* logits, const int32_t* targets, int64_t rows,
                                         int64_t vocab, bool write_gradient, T grad_scale);

// Cross-entropy with a distillation term: for each row with a target, the loss is
//   −log softmax(z)[target] + weight · τ² · KL(softmax(t / τ) ‖ softmax(z / τ)),
// z the row of logits, t the teacher's row of `teacher` [rows, vocab], τ the temperature (Hinton
// et al.'s τ² keeps the term's gradient on the scale of the cross-entropy's). With write_gradient
// each logits row becomes grad_scale · (softmax(z) − onehot(target) + weight · τ · (softmax(z/τ) −
// softmax(t/τ))), the gradient of grad_scale times that loss; rows without a target become zeros.
// Each row's softmaxes are computed in T and its KL summed in double; loss_sum adds both terms.
template <typename T>
CrossEntropyResult distill_cross_entropy(T* logits, const T* teacher, const int32_t* targets, int64_t rows,
                                         int64_t vocab, bool write_gradient, T grad_scale, double weight,
                                         double temperature);

// The attention-transfer loss: Σ (a − b)² over n values, each difference taken in T and squared
// and summed in double (in fixed blocks of kSquaredErrorBlock values, whatever the thread count).
// With grad non-null, grad = grad_scale · (a − b) (grad may alias a or b).
inline constexpr int64_t kSquaredErrorBlock = 8192;
template <typename T>
double squared_error(T* grad, const T* a, const T* b, int64_t n, T grad_scale);

}  // namespace dj::cpu
