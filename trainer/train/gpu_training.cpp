#include "trainer/train/gpu_training.h"

#include "kernels/core/error.h"

#if DIJIANG_HAVE_CUDA
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/ops.h"
#include "trainer/model/gpt_neox_cuda.h"
#if DIJIANG_HAVE_NCCL
#include "comm/nccl/nccl_communicator.h"
#endif
#endif

#include <cstdlib>

namespace dj {

#if DIJIANG_HAVE_CUDA
namespace {

// The node-local rank the launcher gives (Open MPI, Slurm, MPICH/Hydra), or 0.
int local_rank() {
  for (const char* name : {"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID", "MPI_LOCALRANKID", "PMI_LOCAL_RANK"})
    if (const char* value = std::getenv(name)) return std::atoi(value);
  return 0;
}

template <typename T>
class CudaTraining final : public GpuTraining {
 public:
  CudaTraining(const ModelConfig& config, std::unique_ptr<comm::Communicator> nccl)
      : nccl_(std::move(nccl)),
        model_(config, nullptr),
        m_(static_cast<size_t>(model_.layout().total())),
        v_(static_cast<size_t>(model_.layout().total())),
        decay_(static_cast<size_t>(model_.layout().total())),
        update_(static_cast<size_t>(model_.layout().total())) {}

  int64_t total() const override { return model_.layout().total(); }

  void load(const Reader& read, bool with_moments) override {
    std::vector<float> host(static_cast<size_t>(total()));
    read("parameters", 0, total(), host.data());
    model_.upload_parameters(host.data());
    for (auto [name, moment] : {std::pair{"optimizer.m", &m_}, std::pair{"optimizer.v", &v_}}) {
      if (with_moments) {
        read(name, 0, total(), host.data());
        upload(moment->get(), host.data(), host.size());
      } else {
        DJ_CUDA_CHECK(cudaMemset(moment->get(), 0, moment->size() * sizeof(float)));
      }
    }
  }

  void set_masks(const std::vector<uint8_t>& decay, const std::vector<uint8_t>& update) override {
    if (decay.size() != decay_.size() || update.size() != update_.size()) fail("optimizer masks of the wrong size");
    upload(decay_.get(), decay.data(), decay.size());
    upload(update_.get(), update.data(), update.size());
    // Frozen values are runs of whole tensors: remember the runs to zero their gradients.
    frozen_.clear();
    for (size_t i = 0; i < update.size();) {
      if (update[i]) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < update.size() && !update[j]) ++j;
      frozen_.push_back({static_cast<int64_t>(i), static_cast<int64_t>(j)});
      i = j;
    }
  }

  void start_step() override { model_.zero_gradients(); }

  double micro_batch(const int32_t* ids, int64_t count, int64_t tokens, double weight) override {
    const double loss = model_.forward(ids, count, tokens, true, weight);
    model_.backward();
    return weight * loss;
  }

  void finish_gradients() override {
    if (nccl_) nccl_->all_reduce(model_.gradients(), total(), "gradient all-reduce");
  }

  double gradient_sum_of_squares() override {
    for (const auto& [begin, end] : frozen_)
      DJ_CUDA_CHECK(cudaMemsetAsync(model_.gradients() + begin, 0, static_cast<size_t>(end - begin) * sizeof(float),
                                    model_.stream()));
    return cuda::sum_of_squares(model_.gradients(), total(), model_.stream());
  }

  void clip(double norm, double max_norm) override {
    cuda::clip_by_global_norm(model_.gradients(), total(), norm, max_norm, model_.stream());
  }

  void update(int64_t step, double lr, const AdamWConfig& c) override {
    cuda::adamw_step(model_.parameters(), m_.get(), v_.get(), model_.gradients(), decay_.get(), update_.get(), total(),
                     step, lr, cuda::AdamWParams{c.beta1, c.beta2, c.eps, c.weight_decay}, model_.stream());
    model_.refresh_parameters();
  }

  EvalResult evaluate(const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch) override {
    return evaluate_windows(model_, ids, seq_len, batch);
  }

  void download(std::vector<float>& params, std::vector<float>& m, std::vector<float>& v) const override {
    params = model_.download_parameters();
    for (auto [out, moment] : {std::pair{&m, &m_}, std::pair{&v, &v_}}) {
      out->resize(moment->size());
      DJ_CUDA_CHECK(cudaMemcpy(out->data(), moment->get(), moment->size() * sizeof(float), cudaMemcpyDeviceToHost));
    }
  }

  std::string memory_report() const override {
    size_t free = 0, total_bytes = 0;
    DJ_CUDA_CHECK(cudaMemGetInfo(&free, &total_bytes));
    return fmt::format("{:.2f} GiB of {:.2f} GiB device memory in use",
                       static_cast<double>(total_bytes - free) / (1 << 30), static_cast<double>(total_bytes) / (1 << 30));
  }

 private:
  template <typename U>
  static void upload(U* device, const U* host, size_t count) {
    DJ_CUDA_CHECK(cudaMemcpy(device, host, count * sizeof(U), cudaMemcpyHostToDevice));
  }

  std::unique_ptr<comm::Communicator> nccl_;  // several ranks only; made before the model's memory
  GPTNeoXCuda<T> model_;
  DeviceArray<float> m_, v_;
  DeviceArray<uint8_t> decay_, update_;
  std::vector<std::pair<int64_t, int64_t>> frozen_;
};

}  // namespace

std::unique_ptr<GpuTraining> make_gpu_training(const ModelConfig& config, const std::string& precision,
                                               comm::Communicator& host) {
  if (precision != "bf16" && precision != "f32") fail("precision {}: expected f32 or bf16", precision);
  int devices = 0;
  DJ_CUDA_CHECK(cudaGetDeviceCount(&devices));
  const int device = host.size() > 1 ? local_rank() % devices : 0;
  DJ_CUDA_CHECK(cudaSetDevice(device));
  std::unique_ptr<comm::Communicator> nccl;
  if (host.size() > 1) {
#if DIJIANG_HAVE_NCCL
    nccl = comm::make_nccl_communicator(host, device);
    nccl->set_timeout_seconds(host.timeout_seconds());
#else
    fail("training on several GPUs needs NCCL, and this build has none");
#endif
  }
  if (precision == "bf16") return std::make_unique<CudaTraining<__nv_bfloat16>>(config, std::move(nccl));
  return std::make_unique<CudaTraining<float>>(config, std::move(nccl));
}

#else

std::unique_ptr<GpuTraining> make_gpu_training(const ModelConfig&, const std::string&, comm::Communicator&) {
  fail("this build of dijiang has no CUDA backend");
}

#endif

}  // namespace dj
