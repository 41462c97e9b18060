// TrainingState over a backend: GPTNeoXModel<Ops> on a ShardedState<Ops>. Included by the files
// that instantiate it (training_state.cpp for the CPU, cuda_training.cpp for the GPU).
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "trainer/model/gpt_neox_impl.h"
#include "trainer/train/sharded_state_impl.h"
#include "trainer/train/training_state.h"

namespace dj {

template <class Ops>
class ShardedTraining : public TrainingState {
 public:
  // `comm` carries the collectives on the backend's buffers and must outlive this.
  ShardedTraining(const ModelConfig& config, int stage, comm::Communicator& comm, Ops ops, std::string description)
      : description_(std::move(description)), comm_(comm),
        model_(config, ops, typename GPTNeoXModel<Ops>::ExternalStorage{}),
        state_(comm, stage, model_.segments(), ops) {
    model_.use_storage(&state_);
  }

  std::string description() const override { return description_; }
  int zero_stage() const override { return state_.stage(); }
  int64_t update_begin() const override { return state_.update_begin(); }
  int64_t update_end() const override { return state_.update_end(); }
  int64_t owned_begin() const override { return state_.owned_begin(); }
  int64_t owned_end() const override { return state_.owned_end(); }
  void load(const Reader& read, bool with_moments) override { state_.load(read, with_moments); }
  void set_masks(const std::vector<uint8_t>& decay, const std::vector<uint8_t>& update) override {
    state_.set_masks(decay, update);
  }
  void set_objective(StageLoss loss, double distill_weight, double temperature) override {
    if (distill_weight > 0 && !teacher_) fail("distillation needs a teacher model");
    objective_ = loss;
    distill_weight_ = distill_weight;
    temperature_ = temperature;
  }
  void set_distillation_teacher(const ModelConfig& config, const TensorMap& tensors,
                                const std::string& source) override {
    teacher_ = std::make_unique<GPTNeoXModel<Ops>>(config, model_.ops());
    check_tensors(teacher_->layout(), config, tensors, source);
    teacher_->load(tensors, source);
  }
  void reset_moments() override { state_.reset_moments(); }
  void set_transfer_teacher(const std::vector<std::vector<float>>& qkv_weights,
                            const std::vector<std::vector<float>>& qkv_biases) override {
    model_.set_transfer_teacher(qkv_weights, qkv_biases);
  }
  void start_step() override { state_.start_step(); }
  double micro_batch(const int32_t* ids, int64_t count, int64_t tokens, double weight, bool first,
                     bool last) override {
    state_.start_micro_batch(first, last);
    if (objective_ == StageLoss::AttentionTransfer) {  // forward and backward in one pass
      if (count > 0) return weight * model_.transfer(ids, count, tokens, weight);
      model_.transfer(ids, 1, tokens, 0.0);
      return 0.0;
    }
    const int64_t sequences = count > 0 ? count : 1;
    typename GPTNeoXModel<Ops>::Distillation distillation;
    if (distill_weight_ > 0)
      distillation = {teacher_->logits_of(ids, sequences, tokens).data(), distill_weight_, temperature_};
    const double mean = model_.forward(ids, sequences, tokens, true, count > 0 ? weight : 0.0,
                                       distill_weight_ > 0 ? &distillation : nullptr);
    const double loss = count > 0 ? weight * mean : 0.0;
    model_.backward();
    return loss;
  }
  void finish_gradients() override { state_.finish_gradients(); }
  double gradient_sum_of_squares() override { return state_.gradient_sum_of_squares(); }
  void clip(double norm, double max_norm) override { state_.clip(norm, max_norm); }
  void update(int64_t step, double lr, const AdamWConfig& config) override { state_.update(step, lr, config); }
  EvalResult evaluate(const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) override {
    return evaluate_windows(model_, ids, seq_len, batch);
  }
  void with_owned(const OwnedFn& fn) override { state_.with_owned(fn); }
  StateMemory memory() const override { return state_.memory(); }
  comm::Communicator& collectives() override { return comm_; }
  StateMemory peak_memory() const override { return state_.peak_memory(); }
  std::string device_memory_report() const override { return model_ops_report(); }

 protected:
  virtual std::string model_ops_report() const { return ""; }
  GPTNeoXModel<Ops>& model() { return model_; }

 private:
  std::string description_;
  comm::Communicator& comm_;
  GPTNeoXModel<Ops> model_;
  ShardedState<Ops> state_;
  StageLoss objective_ = StageLoss::LanguageModel;
  double distill_weight_ = 0.0, temperature_ = 1.0;
  std::unique_ptr<GPTNeoXModel<Ops>> teacher_;  // the distillation teacher (whole on every rank)
};

}  // namespace dj
