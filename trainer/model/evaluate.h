// Evaluation over consecutive, non-overlapping windows of a token stream.
#pragma once
#include <cstdint>
#include <vector>

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
// are evaluated `batch` at a time. Ids must lie below the model's vocabulary size. Model is
// GPTNeoX<float or double>, or GPTNeoXCuda<float or bf16> in builds with the CUDA backend.
template <typename Model>
EvalResult evaluate_windows(Model& model, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch);

// The same with a model built from `source`.
template <typename T>
EvalResult evaluate_windows(const ModelSource& source, const std::vector<int32_t>& ids, int64_t seq_len,
                            int64_t batch);

}  // namespace dj
