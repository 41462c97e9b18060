// Training state on a CUDA device: the model (bf16 or fp32 activations and products), fp32
// master weights, gradients and AdamW moments, all on the device; the trainer drives it exactly
// as it drives the CPU's ShardedState, and checkpoints hold the same tensors either way, so a
// checkpoint written on one backend resumes on the other. With several ranks, each drives the GPU
// of its local rank and the gradients are all-reduced over NCCL after the step's last micro-batch
// (data parallelism, ZeRO stage 0).
//
// Built with the CUDA backend only (and NCCL for several ranks); make_gpu_training() says so
// otherwise.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "trainer/model/config.h"
#include "trainer/model/evaluate.h"
#include "trainer/optim/adamw.h"

namespace dj {

class GpuTraining {
 public:
  virtual ~GpuTraining() = default;

  virtual int64_t total() const = 0;
  // read(dataset, begin, end, out) as ShardedState::Reader: "parameters", "optimizer.m",
  // "optimizer.v" over [0, total()).
  using Reader = std::function<void(const std::string& dataset, int64_t begin, int64_t end, float* out)>;
  virtual void load(const Reader& read, bool with_moments) = 0;
  // Per-value masks over the flat buffer (1: decays / trains).
  virtual void set_masks(const std::vector<uint8_t>& decay, const std::vector<uint8_t>& update) = 0;

  virtual void start_step() = 0;
  // Forward and backward of `count` sequences of `tokens` ids (host memory); the gradient is that
  // of weight × their mean loss, added to the step's. Returns weight × the mean loss.
  virtual double micro_batch(const int32_t* ids, int64_t count, int64_t tokens, double weight) = 0;
  // Sums the gradients of every rank (NCCL); nothing to do alone.
  virtual void finish_gradients() = 0;
  // Σ g² over the trained values (frozen gradients are zeroed first, as on the CPU).
  virtual double gradient_sum_of_squares() = 0;
  virtual void clip(double norm, double max_norm) = 0;
  virtual void update(int64_t step, double lr, const AdamWConfig& config) = 0;

  virtual EvalResult evaluate(const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) = 0;
  // Host copies of the parameters and both moments, for checkpoints.
  virtual void download(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) const = 0;
  // Bytes of device memory in use now and at most (cudaMemGetInfo's view of the device).
  virtual std::string memory_report() const = 0;
};

// precision: "f32" or "bf16". `host` is the job's communicator: alone, device 0 is used; with
// several ranks, device (local rank mod devices on the node) and an NCCL communicator over `host`.
std::unique_ptr<GpuTraining> make_gpu_training(const ModelConfig& config, const std::string& precision,
                                               comm::Communicator& host);

}  // namespace dj
