// A loaded model that continues sequences (generate, eval-tasks, bench generate), on any backend:
// the commands drive this interface; ModelDecoder<Ops> implements it over GPTNeoXModel<Ops>
// (the CPU's here, the GPU's in trainer/train/cuda_training.cpp through gpu::make_decoder).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/source.h"

namespace dj {

// A batch of sequences being decoded, all at the same position.
class Sequences {
 public:
  virtual ~Sequences() = default;
  virtual int64_t batch() const = 0;
  virtual int64_t position() const = 0;  // tokens consumed per sequence
  virtual int64_t capacity() const = 0;  // positions the state has room for
  // Feeds ids [batch, n] (row-major) and returns the logits [batch, vocab] after each sequence's
  // last new token (valid until the next call). The first call is one pass over its tokens (the
  // prompt); later tokens are one step each.
  virtual const std::vector<double>& feed(const int32_t* ids, int64_t n) = 0;
  // A copy to continue independently (the logits of the last feed included).
  virtual std::unique_ptr<Sequences> fork() const = 0;
  // Bytes of the decoding state on the backend (the KV cache, or DiJiang's recurrent state).
  virtual int64_t state_bytes() const = 0;
  // For benchmarks: continue as if `position` tokens had been fed, with the state as it is (zeros
  // after start). A step's cost depends on the context's length, not on its content.
  virtual void skip_to(int64_t position) = 0;
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual const ModelConfig& config() const = 0;
  // `batch` empty sequences with room for `capacity` positions.
  virtual std::unique_ptr<Sequences> start(int64_t batch, int64_t capacity) = 0;
};

template <class Ops>
class ModelDecoder final : public Decoder {
 public:
  using Model = GPTNeoXModel<Ops>;

  // Loads `source` (whose tensors are released once the model holds them).
  ModelDecoder(ModelSource& source, Ops ops = Ops()) : model_(source.config, std::move(ops)) {
    model_.load(source.tensors, source.path.string());
    TensorMap().swap(source.tensors);
  }
  const ModelConfig& config() const override { return model_.config(); }
  std::unique_ptr<Sequences> start(int64_t batch, int64_t capacity) override {
    return std::make_unique<ModelSequences>(model_, model_.start_decoding(batch, capacity));
  }
  Model& model() { return model_; }

 private:
  class ModelSequences final : public Sequences {
   public:
    ModelSequences(Model& model, typename Model::DecodeState state) : model_(model), state_(std::move(state)) {}
    int64_t batch() const override { return state_.batch; }
    int64_t position() const override { return state_.position; }
    int64_t capacity() const override { return state_.capacity; }
    const std::vector<double>& feed(const int32_t* ids, int64_t n) override {
      model_.decode(state_, ids, n, logits_);
      return logits_;
    }
    std::unique_ptr<Sequences> fork() const override {
      auto copy = std::make_unique<ModelSequences>(model_, model_.start_decoding(state_.batch, state_.capacity));
      model_.copy_decoding(copy->state_, state_);
      copy->logits_ = logits_;
      return copy;
    }
    int64_t state_bytes() const override { return state_.bytes(); }
    void skip_to(int64_t position) override {
      if (position < 0 || (!model_.config().is_converted() && position >= state_.capacity))
        fail("skip_to: position {} leaves no room in a cache of {}", position, state_.capacity);
      state_.position = position;
    }

   private:
    Model& model_;
    typename Model::DecodeState state_;
    std::vector<double> logits_;
  };

  Model model_;
};

// A decoder on the CPU in `precision` f32 or f64.
std::unique_ptr<Decoder> make_cpu_decoder(ModelSource source, Precision precision);

}  // namespace dj
