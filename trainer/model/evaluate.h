// Evaluation over consecutive, non-overlapping windows of a token stream.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/core/error.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/source.h"

namespace dj {

struct EvalResult {
  double loss_sum = 0.0;      // summed next-token cross-entropy (nats)
  int64_t predicted = 0;      // number of predictions
  int64_t windows = 0;
  int64_t tokens_processed = 0;
};

// The stream is cut into windows of seq_len tokens; a trailing remainder of at least two tokens
// forms one shorter window (a single leftover token predicts nothing and is dropped). Each window
// is an independent sequence (positions restart at 0) predicting its tokens 1..n-1. Full windows
// are evaluated `batch` at a time, through the model's evaluation pass (no activations kept for a
// backward), in passes of at most kEvalTokensPerPass tokens (one window when windows are longer):
// memory is one layer's activations of such a pass, whatever the batch and the stream's length.
// Ids must lie below the model's vocabulary size. Model is any GPTNeoXModel.
inline constexpr int64_t kEvalTokensPerPass = 8192;
template <typename Model>
EvalResult evaluate_windows(Model& model, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) {
  if (seq_len < 2) fail("--seq-len must be at least 2, got {}", seq_len);
  const ModelConfig& c = model.config();
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= c.vocab_size)
      fail("token id {} at index {} is not below the model's vocab_size {}", ids[i], i, c.vocab_size);
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t full = n / seq_len, remainder = n % seq_len;
  if (full == 0 && remainder < 2) fail("{} token(s) are too few to predict anything", n);

  EvalResult r;
  const int64_t per_pass = std::clamp<int64_t>(kEvalTokensPerPass / seq_len, 1, batch);
  for (int64_t w = 0; w < full; w += per_pass) {
    const int64_t b = std::min(per_pass, full - w);
    const LossSum loss = model.evaluate(ids.data() + w * seq_len, b, seq_len);
    r.loss_sum += loss.sum;
    r.predicted += loss.count;
    r.windows += b;
    r.tokens_processed += b * seq_len;
  }
  if (remainder >= 2) {
    const LossSum loss = model.evaluate(ids.data() + full * seq_len, 1, remainder);
    r.loss_sum += loss.sum;
    r.predicted += loss.count;
    r.windows += 1;
    r.tokens_processed += remainder;
  }
  return r;
}

// The same with a CPU model built from `source` (T: float or double); the source's tensors are
// released once the model holds them.
template <typename T>
EvalResult evaluate_windows(ModelSource source, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch);

}  // namespace dj
