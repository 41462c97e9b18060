// The GPT-NeoX (Pythia) causal language model on the CPU with an explicit forward and backward
// per layer, following shared/reference/pythia.md section 2. T is float (training, evaluation)
// or double (reference evaluations and finite-difference tests).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/checkpoint/tensor_map.h"
#include "trainer/model/config.h"
#include "trainer/model/parameters.h"

namespace dj {

template <typename T>
class GPTNeoX {
 public:
  explicit GPTNeoX(ModelConfig config);

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  // The model's own flat buffers (empty while a SegmentStorage is in use).
  std::vector<T>& parameters() { return params_; }
  const std::vector<T>& parameters() const { return params_; }
  // Allocated (zeroed) by the first zero_gradients() or backward(); empty before.
  std::vector<T>& gradients() { return grads_; }
  // A tensor's values or gradient by name: in the model's own buffers, or (with a
  // SegmentStorage) in its segment while that segment is acquired.
  T* parameter(const std::string& name);
  const T* parameter(const std::string& name) const;
  T* gradient(const std::string& name);

  const std::vector<ParameterSegment>& segments() const { return segments_; }
  // Hands parameter and gradient storage to `storage` and frees the model's own buffers; every
  // forward and backward then acquires and releases segments through it (collectives may run
  // inside, so every rank must make the same calls). nullptr returns to fresh, zeroed own buffers.
  void use_storage(SegmentStorage<T>* storage);

  // Copies checkpoint tensors into the parameter buffer, converting from their stored dtype,
  // after check_tensors() has validated them; `source` names the checkpoint in errors.
  void load(const TensorMap& tensors, const std::string& source);
  // The parameters as named tensors of the given floating dtype.
  TensorMap to_tensors(DType dtype) const;

  // ids [batch, seq]. Returns the mean next-token cross-entropy over batch * (seq - 1)
  // predictions (Hugging Face's loss with labels = ids); logits() holds [batch, seq, vocab].
  // With for_backward, the fused cross-entropy writes the loss gradient over the logits in the
  // same pass (logits() then holds that gradient), so a training step computes the softmax once.
  // `gradient_weight` scales the gradient the following backward computes (the gradient of
  // gradient_weight × mean loss), so micro-batches of different sizes combine into one mean.
  double forward(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward = false,
                 double gradient_weight = 1.0);
  // As forward, plus the sum of losses and number of predictions, for exact averaging across
  // windows of different lengths.
  struct LossSum {
    double sum = 0.0;
    int64_t count = 0;
  };
  LossSum forward_loss_sum(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward = false,
                           double gradient_weight = 1.0);
  // Accumulates (+=) the gradient of the last forward's mean loss into gradients().
  // The logits buffer is consumed (overwritten by its gradient).
  void backward();
  void zero_gradients();

  const std::vector<T>& logits() const { return acts_.logits; }

 private:
  struct LayerActivations {
    std::vector<T> input;                   // residual stream entering the layer [N, D]
    std::vector<T> ln1, ln1_mean, ln1_rstd;  // [N, D], [N], [N]
    std::vector<T> q, k, v, attn, lse;       // [B, H, S, d] (q, k after rotary), lse [B, H, S]
    std::vector<T> merged;                  // attention output, heads merged [N, D]
    std::vector<T> mid;                     // sequential residual: x + attention [N, D]
    std::vector<T> ln2, ln2_mean, ln2_rstd;
    std::vector<T> pre_gelu, post_gelu;     // [N, F]
    // DiJiang attention only: feature-map softmax outputs sq, sk and (with learned feature
    // weights) the weighted features fq, fk [B, H, S, d]; GroupNorm output and statistics
    // [N, D], [N, groups]; the gate's pre-activation a · W_G and the gated output [N, D].
    std::vector<T> sq, sk, fq, fk, gn, gn_mean, gn_rstd, gate_pre, gated;
  };
  struct Activations {
    int64_t batch = 0, seq = 0;
    std::vector<int32_t> ids, targets;
    std::vector<LayerActivations> layers;
    std::vector<T> final_input, final_ln, final_mean, final_rstd;
    std::vector<T> logits;
    int64_t predictions = 0;
    double gradient_weight = 1.0;
    // What the logits buffer holds: the logits, their loss gradient (a forward for backward),
    // or nothing usable (the backward consumed it).
    enum class LogitsState { Logits, Gradient, Consumed } logits_state = LogitsState::Consumed;
    // Scratch reused by every layer: fused qkv (and its gradient), per-head gradients, [N, D]
    // and [N, F] temporaries, and the two residual-gradient buffers of the backward.
    std::vector<T> qkv, dq, dk, dv, dattn, dfeature, nd_a, nd_b, nd_c, nd_d, nf, dres_a, dres_b;
  };

  const T* output_embedding() const;
  T* output_embedding_gradient();
  // Segment acquisition (no-ops on the model's own buffers); segment indices as in
  // gpt_neox_segments: 0 embedding, 1 + l layer l, L + 1 head.
  int64_t segment_of(int64_t offset) const;
  void hold_parameters(int64_t segment);
  void drop_parameters(int64_t segment);
  void hold_gradients(int64_t segment);
  void drop_gradients(int64_t segment);
  int64_t head_segment() const { return config_.num_layers + 1; }
  void resize_activations(int64_t batch, int64_t seq);
  void layer_forward(int64_t l, const T* x, T* out);
  void layer_backward(int64_t l, const T* dout, T* dx);
  void attention_forward(int64_t l, const T* ln_out, T* attn_out);
  void attention_backward(int64_t l, const T* dattn_out, T* dln);
  // Softmax attention (the pretrained GPT-NeoX) or DiJiang attention (shared/reference/dijiang.md
  // section 2) between the projected q, k, v and the merged-heads input of the dense projection.
  void softmax_core_forward(LayerActivations& a, int64_t B, int64_t S);
  void softmax_core_backward(LayerActivations& a, int64_t B, int64_t S);
  void dijiang_core_forward(int64_t l, const T* ln_out, int64_t B, int64_t S);
  void dijiang_core_backward(int64_t l, T* dln, int64_t B, int64_t S);
  void mlp_forward(int64_t l, const T* ln_out, T* mlp_out);
  void mlp_backward(int64_t l, const T* dmlp_out, T* dln);

  ModelConfig config_;
  ParameterLayout layout_;
  std::vector<T> params_, grads_;
  std::vector<ParameterSegment> segments_;
  SegmentStorage<T>* storage_ = nullptr;
  std::vector<T*> held_params_, held_grads_;  // per segment, while acquired from storage_
  Activations acts_;
};

extern template class GPTNeoX<float>;
extern template class GPTNeoX<double>;

}  // namespace dj
