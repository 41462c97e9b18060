// The GPT-NeoX (Pythia) causal language model, softmax or DiJiang attention, with an explicit
// forward and backward per layer (docs/architecture.md). The layer sequence is written once,
// over a backend chosen at compile time (cpu_ops.h): GPTNeoX<T> = GPTNeoXModel<CpuOps<T>> runs on
// the CPU in float or double, GPTNeoXModel<CudaOps<T>> (gpt_neox_cuda.h) on a GPU in float or
// bf16. Both compute the same function with the same layouts, parameter layout and loss.
//
// Parameters and gradients live in flat buffers laid out by ParameterLayout, cut into segments
// (embedding, each layer, head). By default the model owns them; a ModelStorage (the ZeRO training
// state, trainer/train/sharded_state.h) may hold them instead, and the model then acquires each
// segment's parameters just before using them and its gradients just before its backward adds to
// them, and releases them after (collectives may run inside, so every rank makes the same calls).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/dijiang.h"
#include "trainer/checkpoint/tensor_map.h"
#include "trainer/model/config.h"
#include "trainer/model/cpu_ops.h"
#include "trainer/model/parameters.h"

namespace dj {

// Where a model finds the parameters and gradients of a segment. A segment's parameters come as
// the fp32 masters (Param) and the copy the products read (Act: the same memory unless the
// backend computes in bf16).
template <class Ops>
class ModelStorage {
 public:
  using Param = typename Ops::Param;
  using Act = typename Ops::Act;
  using Grad = typename Ops::Grad;
  struct Parameters {
    const Param* master = nullptr;
    const Act* compute = nullptr;
  };
  virtual ~ModelStorage() = default;
  // Acquisitions of one segment never overlap themselves; each acquire has one release.
  virtual Parameters acquire_parameters(int64_t segment) = 0;
  virtual void release_parameters(int64_t segment) = 0;
  // A hint: `segment` is acquired next (a sharded storage starts gathering it now).
  virtual void prefetch_parameters(int64_t /*segment*/) {}
  virtual Grad* acquire_gradients(int64_t segment) = 0;
  virtual void release_gradients(int64_t segment) = 0;
};

template <class Ops>
class OwnedStorage;

template <class Ops>
class GPTNeoXModel {
 public:
  using Act = typename Ops::Act;
  using Param = typename Ops::Param;
  using Grad = typename Ops::Grad;
  using Stat = typename Ops::Stat;
  template <typename U>
  using Array = typename Ops::template Array<U>;
  using Storage = ModelStorage<Ops>;

  // Refuses configurations the backend cannot run (a DiJiang form it lacks, a head size its
  // kernels do not support) with a message saying what to change.
  explicit GPTNeoXModel(ModelConfig config, Ops ops = Ops());
  // A model whose parameters and gradients another storage will hold: nothing is allocated for
  // them here, and use_storage must be called before the model is used.
  struct ExternalStorage {};
  GPTNeoXModel(ModelConfig config, Ops ops, ExternalStorage);
  ~GPTNeoXModel();
  GPTNeoXModel(const GPTNeoXModel&) = delete;
  GPTNeoXModel& operator=(const GPTNeoXModel&) = delete;

  const ModelConfig& config() const { return config_; }
  const ParameterLayout& layout() const { return layout_; }
  const std::vector<ParameterSegment>& segments() const { return segments_; }
  Ops& ops() { return ops_; }

  // The model's own flat buffers (an error while a ModelStorage is in use). parameters() are the
  // masters; after writing them directly call parameters_changed() (it refreshes the bf16 copy
  // the products read). gradients() are allocated (zeroed) by the first zero_gradients() or
  // backward().
  Array<Param>& parameters();
  const Array<Param>& parameters() const;
  Array<Grad>& gradients();
  void parameters_changed();
  void zero_gradients();

  // Hands parameter and gradient storage to `storage` and frees the model's own; nullptr returns
  // to fresh own buffers (parameters zero).
  void use_storage(Storage* storage);

  // Copies checkpoint tensors into the own parameters, converting from their stored dtype, after
  // check_tensors() has validated them; `source` names the checkpoint in errors.
  void load(const TensorMap& tensors, const std::string& source);
  // The own parameters as named tensors of the given floating dtype.
  TensorMap to_tensors(DType dtype) const;

  // ids (host) [batch, seq]. Returns the mean next-token cross-entropy over batch · (seq − 1)
  // predictions (Hugging Face's loss with labels = ids); logits() holds [batch, seq, vocab].
  // With for_backward the fused cross-entropy writes the loss gradient over the logits in the same
  // pass (logits() then holds that gradient), so a training step computes the softmax once.
  // `gradient_weight` scales the gradient the following backward computes (the gradient of
  // gradient_weight × mean loss), so micro-batches of different sizes combine into one mean.
  //
  // With a Distillation (for_backward only) every prediction's loss adds
  // weight · τ² · KL(softmax(teacher/τ) ‖ softmax(logits/τ)): the distance to a teacher's next-token
  // distribution at temperature τ (docs/training.md).
  struct Distillation {
    const Act* teacher_logits = nullptr;  // [batch·seq, vocab] on the backend, for the same ids
    double weight = 0.0, temperature = 1.0;
  };
  double forward(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward = false,
                 double gradient_weight = 1.0, const Distillation* distillation = nullptr);
  // As forward, with the sum of losses and the number of predictions.
  LossSum forward_loss_sum(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward = false,
                           double gradient_weight = 1.0, const Distillation* distillation = nullptr);
  // The logits [batch·seq, vocab] of ids, computed a layer at a time as evaluate() does, without
  // anything kept for a backward pass: a distillation teacher's. Valid until the next call of
  // logits_of, evaluate or decode.
  const Array<Act>& logits_of(const int32_t* ids, int64_t batch, int64_t seq);
  // Accumulates (+=) the gradient of the last forward's weighted mean loss into the gradients.
  // The logits buffer is consumed (overwritten by its gradient).
  void backward();
  const Array<Act>& logits() const { return acts_.logits; }

  // Attention transfer (docs/training.md, "Stages"), for a model with converted attention: every
  // layer computes the teacher's softmax attention and the model's own (DiJiang) attention from the
  // same LayerNorm output, with the layer's query_key_value and dense weights, and the residual
  // stream carries the teacher's output, so each layer sees the inputs the softmax model gives it.
  // Returns the sum over layers of the mean squared difference of the two attention outputs
  // ([batch·seq, hidden] each, after the dense projection) and accumulates (+=) the gradient of
  // gradient_weight × that sum into the gradients: forward and backward in one pass, a layer at a
  // time. Only the layers' attention tensors get gradients (query_key_value's and dense's through
  // the student alone); the loss does not depend on the rest.
  double transfer(const int32_t* ids, int64_t batch, int64_t seq, double gradient_weight = 1.0);
  // The teacher's own query_key_value weights and biases (per layer, [3·hidden, hidden] and
  // [3·hidden] values, the source model's), for transfer stages that also train the query and key
  // projections: from then on the teacher's q, k, v come from these fixed copies instead of the
  // model's weights (empty vectors: back to the model's own). The biases may be empty without
  // attention biases.
  void set_transfer_teacher(const std::vector<std::vector<Param>>& qkv_weights,
                            const std::vector<std::vector<Param>>& qkv_biases);

  // Evaluation: the loss sum of ids [batch, seq] without keeping anything for a backward pass:
  // one layer's activations at a time, and the logits of at most `rows_per_block` rows.
  static constexpr int64_t kEvalLogitRows = 256;
  LossSum evaluate(const int32_t* ids, int64_t batch, int64_t seq, int64_t rows_per_block = kEvalLogitRows);

  // ---- incremental decoding (generate, eval-tasks, bench generate) ------------------------------
  // What a batch of sequences continues from: per layer, the softmax model's key/value cache
  // ([batch·H, capacity, d] each) or DiJiang's recurrent state ([batch·H, d, d], whatever the
  // length), and the number of positions consumed.
  struct DecodeState {
    int64_t batch = 0, capacity = 0, position = 0;
    std::vector<Array<Act>> keys, values;
    std::vector<Array<Stat>> states;
    int64_t bytes() const;
  };
  // Room for `capacity` positions (the softmax cache's size; DiJiang's state does not grow).
  DecodeState start_decoding(int64_t batch, int64_t capacity) const;
  // dst becomes a copy of src: one context's state continued several ways.
  void copy_decoding(DecodeState& dst, const DecodeState& src);
  // Feeds ids [batch, n] (host, row-major) at positions state.position... and writes the logits of
  // each sequence's last new token to last_logits ([batch, vocab], double). At position 0 the n
  // tokens are one pass, as in evaluate() (DiJiang: the model's form, and the state of the prefix
  // from its chunkwise prefill); after that tokens are taken one at a time: a recurrent step of
  // DiJiang's state (O(1) in the context) or attention over the cache.
  void decode(DecodeState& state, const int32_t* ids, int64_t n, std::vector<double>& last_logits);

 private:
  struct LayerActivations {
    Array<Act> input;                   // residual stream entering the layer [N, D]
    Array<Act> ln1, q, k, v, attn;      // [N, D]; q, k, v, attn as [B, H, S, d] (q, k after rotary)
    Array<Stat> ln1_mean, ln1_rstd, ln2_mean, ln2_rstd, lse;  // [N], lse [B, H, S]
    Array<Act> merged;                  // attention output, heads merged [N, D]
    Array<Act> mid;                     // sequential residual: x + attention [N, D]
    Array<Act> ln2, pre_gelu, post_gelu;  // [N, D], [N, F], [N, F]
    // DiJiang only: feature-map softmax outputs sq, sk and (with learned feature weights) the
    // weighted features fq, fk [B, H, S, d]; the gate's pre-activation a · W_G and the gated
    // output [N, D]; GroupNorm statistics [N, groups].
    Array<Act> sq, sk, fq, fk, gate_pre, gated;
    Array<Stat> gn_mean, gn_rstd;
    // Linear-attention baselines: sq, sk hold the features [B, H, S, m]; vx is v with a column of
    // ones and ox the attention of [v, 1] (numerators, then the denominator) [B, H, S, d + 1];
    // attn is ox normalised.
    Array<Act> vx, ox;
  };
  enum class LogitsState { Logits, Gradient, Consumed };
  struct Activations {
    int64_t batch = 0, seq = 0;
    DecodeState* decoding = nullptr;  // set while decode() runs a pass
    std::vector<int32_t> host_targets;
    Array<int32_t> ids, targets;
    std::vector<LayerActivations> layers;
    Array<Act> final_input, final_ln, logits;
    Array<Stat> final_mean, final_rstd;
    int64_t predictions = 0;
    double gradient_weight = 1.0;
    LogitsState logits_state = LogitsState::Consumed;
    // Scratch shared by the layers: fused qkv (and its gradient), per-head gradients, [N, D]
    // and [N, F] temporaries, and the two residual-gradient buffers of the backward.
    Array<Act> qkv, dq, dk, dv, dattn, dfeature, nd_a, nd_b, nd_c, nd_d, nf, dres_a, dres_b;
    // Linear-attention baselines' backward: d(features) [B, H, S, m], d(ox) and d(vx) [B, H, S, d + 1].
    Array<Act> dfq_x, dfk_x, dox, dvx;
    // Attention transfer: the teacher's attention output [N, D] and its log-sum-exps [B, H, S].
    Array<Act> teacher;
    Array<Stat> teacher_lse;
  };

  // Parameter views: as the products read them (Act), the masters (Param), and gradients.
  const Act* p(const std::string& name) const;
  const Param* pm(const std::string& name) const;
  Grad* g(const std::string& name);
  const Act* output_embedding() const;
  Grad* output_embedding_gradient();
  int64_t segment_of(int64_t offset) const;
  int64_t head_segment() const { return config_.num_layers + 1; }
  void hold_parameters(int64_t segment, int64_t next = -1);
  void drop_parameters(int64_t segment);
  void hold_gradients(int64_t segment);
  void drop_gradients(int64_t segment);

  void prepare(Activations& a, const int32_t* ids, int64_t batch, int64_t seq, bool for_training,
               int64_t logit_rows);
  void allocate_layer(LayerActivations& l, int64_t N, bool for_training);
  void allocate_scratch(Activations& a, int64_t N);
  void trunk_forward(Activations& a, bool keep_layers);
  void layer_forward(Activations& s, LayerActivations& a, int64_t l, const Act* x, Act* out);
  void project_qkv(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out);
  void attention_forward(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out, Act* attn_out);
  void dijiang_core_forward(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out);
  void linear_core_forward(Activations& s, LayerActivations& a, int64_t l);
  // The converted attention (DiJiang's or a baseline's) of layer l; returns the dense projection's input.
  const Act* converted_core_forward(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out);
  void decode_pass(Activations& a, DecodeState& state, const int32_t* ids, int64_t n, std::vector<double>* logits);
  void mlp_forward(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out, Act* mlp_out);
  void layer_backward(int64_t l, const Act* dout, Act* dx);
  void attention_backward(int64_t l, const Act* dattn_out, Act* dln);
  void dijiang_core_backward(int64_t l, Act* dln);
  void linear_core_backward(int64_t l);
  void mlp_backward(int64_t l, const Act* dmlp_out, Act* dln);

  ModelConfig config_;
  ParameterLayout layout_;
  std::vector<ParameterSegment> segments_;
  cpu::DecayForm form_ = cpu::DecayForm::Chunkwise;
  Ops ops_;
  // log γ = 0 for every head: the baselines' attention runs the decayed kernels with γ = 1.
  Array<Param> zero_log_gamma_;
  std::unique_ptr<OwnedStorage<Ops>> own_;
  Storage* storage_ = nullptr;
  std::vector<typename Storage::Parameters> held_params_;
  std::vector<Grad*> held_grads_;
  // The teacher's query_key_value weights and biases per layer (set_transfer_teacher), as the
  // products read them; empty: the teacher uses the model's own.
  std::vector<Array<Act>> teacher_qkv_weights_, teacher_qkv_biases_;
  Activations acts_;   // training (and plain forward)
  Activations eval_;   // evaluate() and decoding's first pass: one layer of activations
  Activations step_;   // decoding's single-token passes
};

// The CPU model in float (training, evaluation) or double (reference evaluations and
// finite-difference tests).
template <typename T>
using GPTNeoX = GPTNeoXModel<CpuOps<T>>;

extern template class GPTNeoXModel<CpuOps<float>>;
extern template class GPTNeoXModel<CpuOps<double>>;

}  // namespace dj
