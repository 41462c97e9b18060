#include "trainer/model/evaluate.h"

#include <algorithm>

#include "kernels/core/error.h"
#include "trainer/model/gpt_neox_cuda.h"

namespace dj {

template <typename Model>
EvalResult evaluate_windows(Model& model, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) {
  if (seq_len < 2) fail("--seq-len must be at least 2, got {}", seq_len);
  const ModelConfig& c = model.config();
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] >= c.vocab_size)
      fail("token id {} at index {} is not below the model's vocab_size {}", ids[i], i, c.vocab_size);
  const auto n = static_cast<int64_t>(ids.size());
  const int64_t full = n / seq_len, remainder = n % seq_len;
  if (full == 0 && remainder < 2) fail("{} token(s) are too few to predict anything", n);

  EvalResult r;
  for (int64_t w = 0; w < full; w += batch) {
    const int64_t b = std::min(batch, full - w);
    const auto loss = model.forward_loss_sum(ids.data() + w * seq_len, b, seq_len);
    r.loss_sum += loss.sum;
    r.predicted += loss.count;
    r.windows += b;
    r.tokens_processed += b * seq_len;
  }
  if (remainder >= 2) {
    const auto loss = model.forward_loss_sum(ids.data() + full * seq_len, 1, remainder);
    r.loss_sum += loss.sum;
    r.predicted += loss.count;
    r.windows += 1;
    r.tokens_processed += remainder;
  }
  return r;
}

template <typename T>
EvalResult evaluate_windows(const ModelSource& source, const std::vector<int32_t>& ids, int64_t seq_len,
                            int64_t batch) {
  GPTNeoX<T> model(source.config);
  model.load(source.tensors, source.path.string());
  return evaluate_windows(model, ids, seq_len, batch);
}

template EvalResult evaluate_windows(GPTNeoX<float>&, const std::vector<int32_t>&, int64_t, int64_t);
template EvalResult evaluate_windows(GPTNeoX<double>&, const std::vector<int32_t>&, int64_t, int64_t);
#if DIJIANG_HAVE_CUDA
template EvalResult evaluate_windows(GPTNeoXCuda<float>&, const std::vector<int32_t>&, int64_t, int64_t);
template EvalResult evaluate_windows(GPTNeoXCuda<__nv_bfloat16>&, const std::vector<int32_t>&, int64_t, int64_t);
#endif
template EvalResult evaluate_windows<float>(const ModelSource&, const std::vector<int32_t>&, int64_t, int64_t);
template EvalResult evaluate_windows<double>(const ModelSource&, const std::vector<int32_t>&, int64_t, int64_t);

}  // namespace dj
