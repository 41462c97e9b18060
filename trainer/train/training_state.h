// What the training loop (trainer.cpp) drives: the model and its ZeRO state on one backend. The
// loop makes the same calls whatever the backend, rank count and stage; checkpoints hold the same
// fp32 slices either way, so a run may resume on another backend, rank count or stage.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "trainer/config/choices.h"
#include "trainer/model/config.h"
#include "trainer/model/evaluate.h"
#include "trainer/optim/adamw.h"
#include "trainer/train/sharded_state.h"

namespace dj {

class TrainingState {
 public:
  virtual ~TrainingState() = default;

  // "CPU (2 threads, OpenBLAS Haswell kernels)", "CUDA device 0: NVIDIA H200 (sm_90), bf16".
  virtual std::string description() const = 0;
  virtual int zero_stage() const = 0;
  // The flat-buffer range whose masks this rank sets (update) and the slice it checkpoints (owned).
  virtual int64_t update_begin() const = 0;
  virtual int64_t update_end() const = 0;
  virtual int64_t owned_begin() const = 0;
  virtual int64_t owned_end() const = 0;

  using Reader = std::function<void(const std::string& dataset, int64_t begin, int64_t end, float* out)>;
  // As ShardedState::load: host values of "parameters", "optimizer.m", "optimizer.v".
  virtual void load(const Reader& read, bool with_moments) = 0;
  // Host masks over [update_begin, update_end) (1: takes weight decay / trains).
  virtual void set_masks(const std::vector<uint8_t>& decay, const std::vector<uint8_t>& update) = 0;

  // What micro_batch minimises from now on (the stage's loss): the language model's cross-entropy
  // (the default), with distill_weight > 0 plus the distillation term at `temperature` (a teacher
  // must have been set), or the attention-transfer loss (GPTNeoXModel::transfer).
  virtual void set_objective(StageLoss loss, double distill_weight, double temperature) = 0;
  // The distillation teacher: a whole model on every rank, with `tensors` (checked against
  // `config`; `source` names them in errors), used only to compute next-token logits.
  virtual void set_distillation_teacher(const ModelConfig& config, const TensorMap& tensors,
                                        const std::string& source) = 0;
  // The source's query_key_value weights and biases per layer, from which attention transfer then
  // computes the teacher (GPTNeoXModel::set_transfer_teacher); every rank holds all of them.
  virtual void set_transfer_teacher(const std::vector<std::vector<float>>& qkv_weights,
                                    const std::vector<std::vector<float>>& qkv_biases) = 0;
  // Zeroes AdamW's moments over the update range: a stage's fresh optimizer.
  virtual void reset_moments() = 0;

  virtual void start_step() = 0;
  // Forward and backward of `count` sequences of `tokens` ids (host memory); the gradient is that
  // of weight × their mean loss, added to the step's. count == 0 runs a pass that carries no
  // gradient over the first sequence of `ids` (a rank with fewer sequences than micro-batches: the
  // collectives inside the backward need every rank). Returns weight × the mean loss (0 for such a
  // pass). first/last: the step's first and last micro-batch. The loss is the objective's.
  virtual double micro_batch(const int32_t* ids, int64_t count, int64_t tokens, double weight, bool first,
                             bool last) = 0;
  virtual void finish_gradients() = 0;
  // Σ g² of the step's gradients over every rank, frozen values zeroed first.
  virtual double gradient_sum_of_squares() = 0;
  virtual void clip(double norm, double max_norm) = 0;
  virtual void update(int64_t step, double lr, const AdamWConfig& config) = 0;

  // Windowed evaluation of this rank's ids (collective at stage 3: every rank must call it with
  // the same number of windows).
  virtual EvalResult evaluate(const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) = 0;
  // Calls fn with host memory holding this rank's slice [owned_begin, owned_end) of the parameters
  // and both moments, for checkpoints: the state's own buffers on the CPU, copies from a GPU.
  using OwnedFn = std::function<void(const float* params, const float* m, const float* v)>;
  virtual void with_owned(const OwnedFn& fn) = 0;
  // Bytes of state now and at the peak; and, on a GPU, the device's memory in use ("" on the CPU).
  virtual StateMemory memory() const = 0;
  // The communicator of the state's collectives (the host one on the CPU, NCCL on GPUs), whose
  // traffic counters the resource report reads.
  virtual comm::Communicator& collectives() = 0;
  virtual StateMemory peak_memory() const = 0;
  virtual std::string device_memory_report() const = 0;
};

// The CPU's state: GPTNeoX<float> on a ShardedState of `stage` over `host` (MPI or one process).
std::unique_ptr<TrainingState> make_cpu_training_state(const ModelConfig& config, int stage,
                                                       comm::Communicator& host);

}  // namespace dj
