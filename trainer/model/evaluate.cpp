#include "trainer/model/evaluate.h"

#include "trainer/model/decoder.h"

namespace dj {

template <typename T>
EvalResult evaluate_windows(ModelSource source, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) {
  GPTNeoX<T> model(source.config);
  model.load(source.tensors, source.path.string());
  TensorMap().swap(source.tensors);
  return evaluate_windows(model, ids, seq_len, batch);
}

template EvalResult evaluate_windows<float>(ModelSource, const std::vector<int32_t>&, int64_t, int64_t);
template EvalResult evaluate_windows<double>(ModelSource, const std::vector<int32_t>&, int64_t, int64_t);

std::unique_ptr<Decoder> make_cpu_decoder(ModelSource source, Precision precision) {
  if (precision == Precision::F64) return std::make_unique<ModelDecoder<CpuOps<double>>>(source);
  if (precision == Precision::F32) return std::make_unique<ModelDecoder<CpuOps<float>>>(source);
  fail("precision bf16: the CPU decodes in f32 or f64");
}

}  // namespace dj
