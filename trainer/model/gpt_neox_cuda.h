// GPT-NeoX (softmax or DiJiang attention) on one GPU: the CUDA twin of GPTNeoX<float>, with the
// same layers, layouts, parameter layout and loss. Built only with the CUDA backend.
//
// Master parameters and their gradients are fp32 flat buffers on the device in ParameterLayout
// order, so the optimizer, clipping and the communicators work on them as on the CPU's. The
// activations and matrix products use T: float (the checked twin of the CPU model) or bf16
// (training: bf16 operands, fp32 accumulation, fp32 LayerNorm/GroupNorm statistics, fp32
// DiJiang parameters and decoding states). With bf16 a copy of the parameters feeds the
// products; refresh_parameters() rounds the masters into it after every update.
//
// The decayed attention always runs in its chunkwise form (the three forms compute one function).
#pragma once
#if DIJIANG_HAVE_CUDA
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "trainer/model/config.h"
#include "trainer/model/parameters.h"

namespace dj {

namespace cuda {
class Blas;
class RotaryTable;
}  // namespace cuda

// Device memory of `count` values of T that frees itself; contents are not initialised.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(size_t count);
  ~DeviceArray();
  DeviceArray(DeviceArray&& other) noexcept;
  DeviceArray& operator=(DeviceArray&& other) noexcept;
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return data_; }
  size_t size() const { return count_; }

 private:
  T* data_ = nullptr;
  size_t count_ = 0;
};

template <typename T>
class GPTNeoXCuda {
 public:
  explicit GPTNeoXCuda(ModelConfig config, cudaStream_t stream = nullptr);
  ~GPTNeoXCuda();
  GPTNeoXCuda(const GPTNeoXCuda&) = delete;
  GPTNeoXCuda& operator=(const GPTNeoXCuda&) = delete;

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  cudaStream_t stream() const { return stream_; }
  // fp32 masters and gradients on the device, layout().total() values each.
  float* parameters() { return master_.get(); }
  float* gradients() { return grads_.get(); }

  // Copies layout().total() fp32 values from the host into the masters (and the bf16 copy).
  void upload_parameters(const float* host);
  std::vector<float> download_parameters() const;
  std::vector<float> download_gradients() const;
  // Rounds the masters into the bf16 copy the products read (nothing to do for float).
  void refresh_parameters();
  void zero_gradients();

  // As GPTNeoX<float>::forward: ids (host) [batch, seq]; the mean next-token cross-entropy over
  // batch · (seq − 1) predictions. With for_backward the loss gradient (of gradient_weight × the
  // mean) replaces the logits in the same pass.
  double forward(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward = false,
                 double gradient_weight = 1.0);
  // As forward, plus the sum of losses and number of predictions (for windowed evaluation).
  struct LossSum {
    double sum = 0.0;
    int64_t count = 0;
  };
  LossSum forward_loss_sum(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward = false,
                           double gradient_weight = 1.0);
  // Accumulates (+=) the gradient of the last forward's weighted mean loss into gradients().
  void backward();
  // The logits of the last forward (or their gradient after a forward for backward), on the host.
  std::vector<float> download_logits() const;

 private:
  struct Layer {
    DeviceArray<T> input, ln1, q, k, v, attn, merged, mid, ln2, pre_gelu, post_gelu;
    DeviceArray<float> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd, lse;
    // DiJiang: feature-map outputs, weighted features, the gate's pre-activation, the gated
    // output and the GroupNorm statistics.
    DeviceArray<T> sq, sk, fq, fk, gate_pre, gated;
    DeviceArray<float> gn_mean, gn_rstd;
  };
  enum class LogitsState { Logits, Gradient, Consumed };

  const T* p(const std::string& name) const;       // parameter as the products read it (T)
  const float* pf(const std::string& name) const;  // fp32 master (DiJiang vectors, tables)
  float* g(const std::string& name);               // fp32 gradient
  const T* output_embedding() const;
  float* output_embedding_gradient();
  void resize(int64_t batch, int64_t seq);
  void layer_forward(int64_t l, const T* x, T* out);
  void attention_forward(int64_t l, const T* ln_out, T* attn_out);
  void dijiang_core_forward(int64_t l, const T* ln_out);
  void mlp_forward(int64_t l, const T* ln_out, T* mlp_out);
  void layer_backward(int64_t l, const T* dout, T* dx);
  void attention_backward(int64_t l, const T* dattn_out, T* dln);
  void dijiang_core_backward(int64_t l, T* dln);
  void mlp_backward(int64_t l, const T* dmlp_out, T* dln);

  ModelConfig config_;
  ParameterLayout layout_;
  cudaStream_t stream_;
  std::unique_ptr<cuda::Blas> blas_;
  std::unique_ptr<cuda::RotaryTable> rotary_;
  DeviceArray<float> master_, grads_;
  DeviceArray<T> copy_;  // bf16 only; float reads the masters

  int64_t batch_ = 0, seq_ = 0, predictions_ = 0;
  double gradient_weight_ = 1.0;
  LogitsState logits_state_ = LogitsState::Consumed;
  DeviceArray<int32_t> ids_, targets_;
  std::vector<Layer> layers_;
  DeviceArray<T> final_input_, final_ln_, logits_;
  DeviceArray<float> final_mean_, final_rstd_;
  // Scratch shared by the layers, as in the CPU model.
  DeviceArray<T> qkv_, dq_, dk_, dv_, dattn_, dfeature_, nd_a_, nd_b_, nd_c_, nd_d_, nf_, dres_a_, dres_b_;
};

extern template class GPTNeoXCuda<float>;
extern template class GPTNeoXCuda<__nv_bfloat16>;

}  // namespace dj
#endif
