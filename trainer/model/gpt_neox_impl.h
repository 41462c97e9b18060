// The definitions of GPTNeoXModel<Ops> (gpt_neox.h): the GPT-NeoX layer sequence, written once for
// every backend. This file: storage, parameters, loading and the forward pass; the backward pass
// is in gpt_neox_backward_impl.h and decoding in gpt_neox_decode_impl.h (both included below). Included by the files that instantiate it: gpt_neox.cpp (CpuOps<float>,
// CpuOps<double>) and gpt_neox_cuda.cpp (CudaOps<float>, CudaOps<bf16>).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/core/error.h"
#include "trainer/model/gpt_neox.h"

namespace dj {

// GroupNorm epsilon of the reference DiJiang layer (torch.nn.GroupNorm's default).
inline constexpr double kGroupNormEps = 1e-5;

// The model's own parameters and gradients: the masters, the copy the products read (only when
// the backend computes in another type than its masters, i.e. bf16) and the gradients.
template <class Ops>
class OwnedStorage final : public ModelStorage<Ops> {
 public:
  using Base = ModelStorage<Ops>;
  using typename Base::Act;
  using typename Base::Grad;
  using typename Base::Param;
  static constexpr bool kSeparateCopy = !std::is_same_v<Act, Param>;

 private:
  Ops& ops_;
  const std::vector<ParameterSegment>& segments_;
  int64_t total_;

 public:
  OwnedStorage(Ops& ops, const std::vector<ParameterSegment>& segments, int64_t total)
      : ops_(ops), segments_(segments), total_(total), master(Ops::template allocate<Param>(total)) {
    ops_.fill_zero(master.data(), total);
    if constexpr (kSeparateCopy) {
      copy = Ops::template allocate<Act>(total);
      refresh();
    }
  }

  typename Base::Parameters acquire_parameters(int64_t segment) override {
    const int64_t begin = segments_[static_cast<size_t>(segment)].begin;
    if constexpr (kSeparateCopy)
      return {master.data() + begin, copy.data() + begin};
    else
      return {master.data() + begin, master.data() + begin};
  }
  void release_parameters(int64_t) override {}
  Grad* acquire_gradients(int64_t segment) override {
    if (static_cast<int64_t>(grads.size()) != total_) zero_gradients();
    return grads.data() + segments_[static_cast<size_t>(segment)].begin;
  }
  void release_gradients(int64_t) override {}

  void zero_gradients() {
    if (static_cast<int64_t>(grads.size()) != total_) grads = Ops::template allocate<Grad>(total_);
    ops_.fill_zero(grads.data(), total_);
  }
  void refresh() {
    if constexpr (kSeparateCopy) ops_.to_compute(copy.data(), master.data(), total_);
  }

  typename Ops::template Array<Param> master;
  typename Ops::template Array<Act> copy;  // bf16 backends only
  typename Ops::template Array<Grad> grads;
};

template <class Ops>
GPTNeoXModel<Ops>::GPTNeoXModel(ModelConfig config, Ops ops) : GPTNeoXModel(std::move(config), std::move(ops), ExternalStorage{}) {
  use_storage(nullptr);
}

template <class Ops>
GPTNeoXModel<Ops>::GPTNeoXModel(ModelConfig config, Ops ops, ExternalStorage)
    : config_(std::move(config)),
      layout_(ParameterLayout::gpt_neox(config_)),
      segments_(gpt_neox_segments(layout_, config_)),
      ops_(std::move(ops)) {
  if (config_.is_converted()) {
    form_ = config_.attention_form();
    if (!Ops::supports(form_))
      fail("the {} form of {} attention runs on the CPU only; on {} the attention is computed in its chunkwise "
           "form (the same function): set the model's form to chunkwise (eval --dijiang-form chunkwise, convert "
           "--form chunkwise)",
           choice_name(form_), config_.attention_name(), Ops::kName);
  }
  if (config_.is_linear()) {
    zero_log_gamma_ = Ops::template allocate<Param>(config_.num_heads);
    ops_.fill_zero(zero_log_gamma_.data(), config_.num_heads);
  }
  Ops::check_config(config_);
}

template <class Ops>
GPTNeoXModel<Ops>::~GPTNeoXModel() = default;

template <class Ops>
int64_t GPTNeoXModel<Ops>::segment_of(int64_t offset) const {
  const auto it = std::upper_bound(segments_.begin(), segments_.end(), offset,
                                   [](int64_t o, const ParameterSegment& s) { return o < s.end; });
  return it - segments_.begin();
}

template <class Ops>
const typename Ops::Act* GPTNeoXModel<Ops>::p(const std::string& name) const {
  const ParameterView& view = layout_.view(name);
  const int64_t s = segment_of(view.offset);
  const auto& held = held_params_[static_cast<size_t>(s)];
  if (held.compute == nullptr) fail("parameter '{}' used while its segment {} is not acquired", name, s);
  return held.compute + (view.offset - segments_[static_cast<size_t>(s)].begin);
}

template <class Ops>
const typename Ops::Param* GPTNeoXModel<Ops>::pm(const std::string& name) const {
  const ParameterView& view = layout_.view(name);
  const int64_t s = segment_of(view.offset);
  const auto& held = held_params_[static_cast<size_t>(s)];
  if (held.master == nullptr) fail("parameter '{}' used while its segment {} is not acquired", name, s);
  return held.master + (view.offset - segments_[static_cast<size_t>(s)].begin);
}

template <class Ops>
typename Ops::Grad* GPTNeoXModel<Ops>::g(const std::string& name) {
  const ParameterView& view = layout_.view(name);
  const int64_t s = segment_of(view.offset);
  Grad* held = held_grads_[static_cast<size_t>(s)];
  if (held == nullptr) fail("gradient of '{}' used while its segment {} is not acquired", name, s);
  return held + (view.offset - segments_[static_cast<size_t>(s)].begin);
}

template <class Ops>
const typename Ops::Act* GPTNeoXModel<Ops>::output_embedding() const {
  return p(config_.tie_word_embeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight");
}

template <class Ops>
typename Ops::Grad* GPTNeoXModel<Ops>::output_embedding_gradient() {
  return g(config_.tie_word_embeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight");
}

template <class Ops>
void GPTNeoXModel<Ops>::hold_parameters(int64_t segment, int64_t next) {
  held_params_[static_cast<size_t>(segment)] = storage_->acquire_parameters(segment);
  if (next >= 0) storage_->prefetch_parameters(next);
}

template <class Ops>
void GPTNeoXModel<Ops>::drop_parameters(int64_t segment) {
  storage_->release_parameters(segment);
  held_params_[static_cast<size_t>(segment)] = {};
}

template <class Ops>
void GPTNeoXModel<Ops>::hold_gradients(int64_t segment) {
  held_grads_[static_cast<size_t>(segment)] = storage_->acquire_gradients(segment);
}

template <class Ops>
void GPTNeoXModel<Ops>::drop_gradients(int64_t segment) {
  storage_->release_gradients(segment);
  held_grads_[static_cast<size_t>(segment)] = nullptr;
}

template <class Ops>
void GPTNeoXModel<Ops>::use_storage(Storage* storage) {
  held_params_.assign(segments_.size(), {});
  held_grads_.assign(segments_.size(), nullptr);
  if (storage != nullptr) {
    own_.reset();
    storage_ = storage;
    return;
  }
  if (!own_) own_ = std::make_unique<OwnedStorage<Ops>>(ops_, segments_, layout_.total());
  storage_ = own_.get();
}

template <class Ops>
typename GPTNeoXModel<Ops>::template Array<typename Ops::Param>& GPTNeoXModel<Ops>::parameters() {
  if (storage_ != own_.get()) fail("the model's parameters are held by a segment storage");
  return own_->master;
}

template <class Ops>
const typename GPTNeoXModel<Ops>::template Array<typename Ops::Param>& GPTNeoXModel<Ops>::parameters() const {
  if (storage_ != own_.get()) fail("the model's parameters are held by a segment storage");
  return own_->master;
}

template <class Ops>
typename GPTNeoXModel<Ops>::template Array<typename Ops::Grad>& GPTNeoXModel<Ops>::gradients() {
  if (storage_ != own_.get()) fail("the model's gradients are held by a segment storage");
  return own_->grads;
}

template <class Ops>
void GPTNeoXModel<Ops>::parameters_changed() {
  if (storage_ != own_.get()) fail("the model's parameters are held by a segment storage");
  own_->refresh();
}

template <class Ops>
void GPTNeoXModel<Ops>::zero_gradients() {
  if (storage_ != own_.get()) fail("zero_gradients: gradients are held by a segment storage");
  own_->zero_gradients();
}

template <class Ops>
void GPTNeoXModel<Ops>::load(const TensorMap& tensors, const std::string& source) {
  if (storage_ != own_.get()) fail("load: the model's parameters are held by a segment storage");
  check_tensors(layout_, config_, tensors, source);
  for (const auto& view : layout_.views()) {
    const Tensor converted = tensors.at(view.name).to(dtype_of<Param>());
    ops_.upload(own_->master.data() + view.offset, converted.template data<Param>(), view.numel());
  }
  own_->refresh();
  ops_.synchronize();
}

template <class Ops>
TensorMap GPTNeoXModel<Ops>::to_tensors(DType dtype) const {
  if (!is_floating(dtype)) fail("parameters can only be written as a floating dtype, not {}", dtype_name(dtype));
  if (storage_ != own_.get()) fail("to_tensors: the model's parameters are held by a segment storage");
  TensorMap out;
  for (const auto& view : layout_.views()) {
    Tensor t(dtype_of<Param>(), view.shape);
    ops_.download(t.template data<Param>(), own_->master.data() + view.offset, view.numel());
    out.emplace(view.name, dtype == dtype_of<Param>() ? t : t.to(dtype));
  }
  return out;
}

template <class Ops>
void GPTNeoXModel<Ops>::allocate_layer(LayerActivations& l, int64_t N, bool for_training) {
  const int64_t D = config_.hidden_size, F = config_.intermediate_size, H = config_.num_heads;
  const bool dijiang = config_.is_dijiang(), weights = dijiang && config_.dijiang.feature_weights;
  const int64_t groups = dijiang ? config_.group_norm_groups() : 0;
  const auto act = [](int64_t n) { return Ops::template allocate<Act>(n); };
  const auto stat = [](int64_t n) { return Ops::template allocate<Stat>(n); };
  // Evaluation runs every layer on one set of activations and reads the residual stream from
  // elsewhere, so it needs no input copy.
  l.input = act(for_training ? N * D : 0);
  l.ln1 = act(N * D);
  l.q = act(N * D);
  l.k = act(N * D);
  l.v = act(N * D);
  l.attn = act(N * D);
  l.merged = act(N * D);
  l.ln2 = act(N * D);
  l.mid = act(config_.use_parallel_residual ? 0 : N * D);
  l.pre_gelu = act(N * F);
  l.post_gelu = act(N * F);
  l.ln1_mean = stat(N);
  l.ln1_rstd = stat(N);
  l.ln2_mean = stat(N);
  l.ln2_rstd = stat(N);
  l.lse = stat(config_.is_converted() ? 0 : N * H);
  const int64_t features = config_.is_linear() ? N * H * config_.linear_features() : config_.has_feature_map() ? N * D : 0;
  for (auto* a : {&l.sq, &l.sk}) *a = act(features);
  for (auto* a : {&l.vx, &l.ox}) *a = act(config_.is_linear() ? N * (D + H) : 0);
  for (auto* a : {&l.gate_pre, &l.gated}) *a = act(dijiang ? N * D : 0);
  for (auto* a : {&l.fq, &l.fk}) *a = act(weights ? N * D : 0);
  l.gn_mean = stat(N * groups);
  l.gn_rstd = stat(N * groups);
}

template <class Ops>
void GPTNeoXModel<Ops>::allocate_scratch(Activations& a, int64_t N) {
  const int64_t D = config_.hidden_size, F = config_.intermediate_size;
  const bool dijiang = config_.is_dijiang();
  const auto act = [](int64_t n) { return Ops::template allocate<Act>(n); };
  for (auto* v : {&a.final_input, &a.final_ln, &a.dq, &a.dk, &a.dv, &a.dattn, &a.nd_a, &a.nd_b, &a.nd_c, &a.dres_a,
                  &a.dres_b})
    *v = act(N * D);
  for (auto* v : {&a.dfeature, &a.nd_d}) *v = act(dijiang ? N * D : 0);
  const bool linear = config_.is_linear();
  for (auto* v : {&a.dfq_x, &a.dfk_x}) *v = act(linear ? N * config_.num_heads * config_.linear_features() : 0);
  for (auto* v : {&a.dox, &a.dvx}) *v = act(linear ? N * (D + config_.num_heads) : 0);
  a.final_mean = Ops::template allocate<Stat>(N);
  a.final_rstd = Ops::template allocate<Stat>(N);
  a.qkv = act(N * 3 * D);
  a.nf = act(N * F);
}

// Sizes the activations for [batch, seq] (kept while the shape repeats), checks and uploads the
// ids and their next-token targets. Training keeps every layer's activations and the whole logits;
// evaluation one layer's activations and the logits of `logit_rows` rows.
template <class Ops>
void GPTNeoXModel<Ops>::prepare(Activations& a, const int32_t* ids, int64_t batch, int64_t seq, bool for_training,
                                int64_t logit_rows) {
  if (batch <= 0 || seq <= 0) fail("forward needs a positive batch and sequence length, got {}x{}", batch, seq);
  const int64_t N = batch * seq, D = config_.hidden_size, V = config_.vocab_size;
  // A kernel cannot refuse an id, so they are checked here, on the host.
  for (int64_t i = 0; i < N; ++i)
    if (ids[i] < 0 || ids[i] >= V) fail("token id {} at index {} is outside the vocabulary of {}", ids[i], i, V);
  if (a.batch != batch || a.seq != seq || static_cast<int64_t>(a.logits.size()) != logit_rows * V) {
    a.batch = batch;
    a.seq = seq;
    a.ids = Ops::template allocate<int32_t>(N);
    a.targets = Ops::template allocate<int32_t>(N);
    a.host_targets.assign(static_cast<size_t>(N), -1);
    a.layers.clear();
    a.layers.resize(for_training ? static_cast<size_t>(config_.num_layers) : 1);
    for (auto& l : a.layers) allocate_layer(l, N, for_training);
    const auto act = [](int64_t n) { return Ops::template allocate<Act>(n); };
    if (for_training) {
      allocate_scratch(a, N);
    } else {
      for (auto* v : {&a.final_input, &a.final_ln, &a.nd_a, &a.nd_b, &a.dres_a}) *v = act(N * D);
      a.final_mean = Ops::template allocate<Stat>(N);
      a.final_rstd = Ops::template allocate<Stat>(N);
      a.qkv = act(N * 3 * D);
    }
    a.logits = act(logit_rows * V);
  }
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s)
      a.host_targets[static_cast<size_t>(b * seq + s)] = s + 1 < seq ? ids[b * seq + s + 1] : -1;
  ops_.upload(a.ids.data(), ids, N);
  ops_.upload(a.targets.data(), a.host_targets.data(), N);
  a.predictions = batch * (seq - 1);
}

// The embedding, every layer and the final LayerNorm, into a.final_ln. With keep_layers each layer
// keeps its activations (a.layers[l]) for the backward and the final LayerNorm's input stays in
// a.final_input; otherwise every layer runs on a.layers[0] and the residual stream alternates
// between a.dres_a and a.final_input.
template <class Ops>
void GPTNeoXModel<Ops>::trunk_forward(Activations& a, bool keep_layers) {
  const int64_t N = a.batch * a.seq, D = config_.hidden_size, V = config_.vocab_size, L = config_.num_layers;
  const bool tied = config_.tie_word_embeddings;
  Act* embedded = !keep_layers ? a.dres_a.data() : L > 0 ? a.layers[0].input.data() : a.final_input.data();
  hold_parameters(0, L > 0 ? 1 : head_segment());
  ops_.embedding_forward(embedded, a.ids.data(), p("gpt_neox.embed_in.weight"), N, V, D);
  if (!tied) drop_parameters(0);
  const Act* x = embedded;
  for (int64_t l = 0; l < L; ++l) {
    LayerActivations& acts = a.layers[keep_layers ? static_cast<size_t>(l) : 0];
    Act* out;
    if (keep_layers)
      out = l + 1 < L ? a.layers[static_cast<size_t>(l + 1)].input.data() : a.final_input.data();
    else
      out = x == a.dres_a.data() ? a.final_input.data() : a.dres_a.data();
    hold_parameters(l + 1, l + 2);
    layer_forward(a, acts, l, x, out);
    drop_parameters(l + 1);
    x = out;
  }
  hold_parameters(head_segment());
  ops_.layernorm_forward(a.final_ln.data(), a.final_mean.data(), a.final_rstd.data(), x,
                         p("gpt_neox.final_layer_norm.weight"), p("gpt_neox.final_layer_norm.bias"), N, D,
                         config_.layer_norm_eps);
}

template <class Ops>
double GPTNeoXModel<Ops>::forward(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward,
                                  double gradient_weight, const Distillation* distillation) {
  const LossSum loss = forward_loss_sum(ids, batch, seq, for_backward, gradient_weight, distillation);
  return loss.count > 0 ? loss.sum / static_cast<double>(loss.count) : 0.0;
}

template <class Ops>
auto GPTNeoXModel<Ops>::logits_of(const int32_t* ids, int64_t batch, int64_t seq) -> const Array<Act>& {
  Activations& a = eval_;
  const int64_t N = batch * seq, D = config_.hidden_size, V = config_.vocab_size;
  prepare(a, ids, batch, seq, false, N);
  trunk_forward(a, false);
  ops_.linear_forward(a.logits.data(), a.final_ln.data(), output_embedding(), nullptr, N, D, V);
  drop_parameters(head_segment());
  if (config_.tie_word_embeddings) drop_parameters(0);
  return a.logits;
}

template <class Ops>
LossSum GPTNeoXModel<Ops>::forward_loss_sum(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward,
                                            double gradient_weight, const Distillation* distillation) {
  if (distillation != nullptr && !for_backward) fail("a forward pass with distillation must be for a backward pass");
  Activations& a = acts_;
  prepare(a, ids, batch, seq, true, batch * seq);
  a.gradient_weight = gradient_weight;
  const int64_t N = batch * seq, D = config_.hidden_size, V = config_.vocab_size;
  trunk_forward(a, true);
  ops_.linear_forward(a.logits.data(), a.final_ln.data(), output_embedding(), nullptr, N, D, V);
  drop_parameters(head_segment());
  if (config_.tie_word_embeddings) drop_parameters(0);
  // Without for_backward the logits stay intact for the caller and a later backward computes
  // their gradient; with it the gradient of the weighted mean loss replaces them now.
  const double grad_scale = a.predictions > 0 ? gradient_weight / static_cast<double>(a.predictions) : 0.0;
  const LossSum loss =
      distillation != nullptr
          ? ops_.distill_cross_entropy(a.logits.data(), distillation->teacher_logits, a.targets.data(), N, V, true,
                                       grad_scale, distillation->weight, distillation->temperature)
          : ops_.cross_entropy(a.logits.data(), a.targets.data(), N, V, for_backward, grad_scale);
  a.logits_state = for_backward ? LogitsState::Gradient : LogitsState::Logits;
  return loss;
}

template <class Ops>
LossSum GPTNeoXModel<Ops>::evaluate(const int32_t* ids, int64_t batch, int64_t seq, int64_t rows_per_block) {
  Activations& a = eval_;
  const int64_t N = batch * seq, D = config_.hidden_size, V = config_.vocab_size;
  const int64_t block = std::clamp<int64_t>(rows_per_block, 1, std::max<int64_t>(N, 1));
  prepare(a, ids, batch, seq, false, block);
  trunk_forward(a, false);
  LossSum total;
  for (int64_t r0 = 0; r0 < N; r0 += block) {
    const int64_t rows = std::min(block, N - r0);
    ops_.linear_forward(a.logits.data(), a.final_ln.data() + r0 * D, output_embedding(), nullptr, rows, D, V);
    const LossSum part = ops_.cross_entropy(a.logits.data(), a.targets.data() + r0, rows, V, false, 0.0);
    total.sum += part.sum;
    total.count += part.count;
  }
  drop_parameters(head_segment());
  if (config_.tie_word_embeddings) drop_parameters(0);
  return total;
}

template <class Ops>
double GPTNeoXModel<Ops>::transfer(const int32_t* ids, int64_t batch, int64_t seq, double gradient_weight) {
  if (!config_.is_converted())
    fail("attention transfer trains converted attention, but the model has softmax attention");
  Activations& a = acts_;
  prepare(a, ids, batch, seq, true, batch * seq);
  a.logits_state = LogitsState::Consumed;  // no logits: backward() has nothing to start from
  const int64_t B = batch, S = seq, N = B * S, D = config_.hidden_size, V = config_.vocab_size;
  const int64_t H = config_.num_heads, d = config_.head_dim(), L = config_.num_layers;
  const bool bias = config_.attention_bias;
  if (static_cast<int64_t>(a.teacher.size()) != N * D) {
    a.teacher = Ops::template allocate<Act>(N * D);
    a.teacher_lse = Ops::template allocate<Stat>(N * H);
  }
  if (L == 0) return 0.0;
  hold_parameters(0, 1);
  ops_.embedding_forward(a.layers[0].input.data(), a.ids.data(), p("gpt_neox.embed_in.weight"), N, V, D);
  drop_parameters(0);
  const double values = static_cast<double>(N * D);
  const double grad_scale = 2.0 * gradient_weight / values;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  double total = 0.0;
  for (int64_t l = 0; l < L; ++l) {
    const std::string pre = layer_prefix(l);
    LayerActivations& la = a.layers[static_cast<size_t>(l)];
    const Act* x = la.input.data();
    hold_parameters(l + 1, l + 1 < L ? l + 2 : -1);
    ops_.layernorm_forward(la.ln1.data(), la.ln1_mean.data(), la.ln1_rstd.data(), x, p(pre + "input_layernorm.weight"),
                           p(pre + "input_layernorm.bias"), N, D, config_.layer_norm_eps);
    project_qkv(a, la, l, la.ln1.data());
    // The teacher: softmax attention of the same q, k, v (or of its own projections' when the
    // stage trains the model's), through the same dense projection.
    const Act *tq = la.q.data(), *tk = la.k.data(), *tv = la.v.data();
    if (!teacher_qkv_weights_.empty()) {
      const auto li = static_cast<size_t>(l);
      ops_.linear_forward(a.qkv.data(), la.ln1.data(), teacher_qkv_weights_[li].data(),
                          bias ? teacher_qkv_biases_[li].data() : nullptr, N, D, 3 * D);
      ops_.split_qkv(a.dq.data(), a.dk.data(), a.dv.data(), a.qkv.data(), B, S, H, d);
      ops_.rotary_forward(a.dq.data(), B * H, S, d, config_.rotary_dims(), config_.rotary_emb_base, 0);
      ops_.rotary_forward(a.dk.data(), B * H, S, d, config_.rotary_dims(), config_.rotary_emb_base, 0);
      tq = a.dq.data();
      tk = a.dk.data();
      tv = a.dv.data();
    }
    ops_.causal_attention_forward(a.dattn.data(), a.teacher_lse.data(), tq, tk, tv, B * H, S, d, scale);
    ops_.merge_heads(a.nd_c.data(), a.dattn.data(), B, S, H, d);
    ops_.linear_forward(a.teacher.data(), a.nd_c.data(), p(pre + "attention.dense.weight"),
                        bias ? p(pre + "attention.dense.bias") : nullptr, N, D, D);
    // The residual stream carries the teacher's attention into the next layer.
    if (l + 1 < L) {
      Act* out = a.layers[static_cast<size_t>(l + 1)].input.data();
      const Act* mlp_in = x;
      if (!config_.use_parallel_residual) {
        ops_.add(la.mid.data(), x, a.teacher.data(), N * D);
        mlp_in = la.mid.data();
      }
      ops_.layernorm_forward(la.ln2.data(), la.ln2_mean.data(), la.ln2_rstd.data(), mlp_in,
                             p(pre + "post_attention_layernorm.weight"), p(pre + "post_attention_layernorm.bias"), N,
                             D, config_.layer_norm_eps);
      mlp_forward(a, la, l, la.ln2.data(), a.nd_b.data());
      if (config_.use_parallel_residual)
        ops_.add3(out, x, a.nd_b.data(), a.teacher.data(), N * D);
      else
        ops_.add(out, la.mid.data(), a.nd_b.data(), N * D);
    }
    // The student: the converted attention of the same LayerNorm output, then its loss and backward.
    const Act* dense_input = converted_core_forward(a, la, l, la.ln1.data());
    ops_.linear_forward(a.nd_a.data(), dense_input, p(pre + "attention.dense.weight"),
                        bias ? p(pre + "attention.dense.bias") : nullptr, N, D, D);
    total += ops_.squared_error(a.nd_a.data(), a.nd_a.data(), a.teacher.data(), N * D, grad_scale) / values;
    hold_gradients(l + 1);
    attention_backward(l, a.nd_a.data(), a.dres_a.data());
    drop_gradients(l + 1);
    drop_parameters(l + 1);
  }
  return total;
}

template <class Ops>
void GPTNeoXModel<Ops>::set_transfer_teacher(const std::vector<std::vector<Param>>& qkv_weights,
                                             const std::vector<std::vector<Param>>& qkv_biases) {
  teacher_qkv_weights_.clear();
  teacher_qkv_biases_.clear();
  if (qkv_weights.empty()) return;
  const int64_t D = config_.hidden_size, L = config_.num_layers;
  const bool bias = config_.attention_bias;
  if (static_cast<int64_t>(qkv_weights.size()) != L || (bias && static_cast<int64_t>(qkv_biases.size()) != L))
    fail("the transfer teacher needs query_key_value weights{} for each of the {} layers", bias ? " and biases" : "", L);
  const auto upload = [&](const std::vector<Param>& host, int64_t n, const char* what, int64_t l) {
    if (static_cast<int64_t>(host.size()) != n)
      fail("the transfer teacher's query_key_value {} of layer {} has {} values, expected {}", what, l, host.size(), n);
    auto staged = Ops::template allocate<Param>(n);
    ops_.upload(staged.data(), host.data(), n);
    auto out = Ops::template allocate<Act>(n);
    ops_.to_compute(out.data(), staged.data(), n);
    return out;
  };
  for (int64_t l = 0; l < L; ++l) {
    const auto li = static_cast<size_t>(l);
    teacher_qkv_weights_.push_back(upload(qkv_weights[li], 3 * D * D, "weight", l));
    if (bias) teacher_qkv_biases_.push_back(upload(qkv_biases[li], 3 * D, "bias", l));
  }
}

template <class Ops>
void GPTNeoXModel<Ops>::layer_forward(Activations& s, LayerActivations& a, int64_t l, const Act* x, Act* out) {
  const std::string pre = layer_prefix(l);
  const int64_t N = s.batch * s.seq, D = config_.hidden_size;
  Act* attn_out = s.nd_a.data();
  Act* mlp_out = s.nd_b.data();
  ops_.layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x, p(pre + "input_layernorm.weight"),
                         p(pre + "input_layernorm.bias"), N, D, config_.layer_norm_eps);
  attention_forward(s, a, l, a.ln1.data(), attn_out);
  // Parallel residual: LN2 reads the layer input; sequential: it reads x + attention.
  const Act* mlp_in = x;
  if (!config_.use_parallel_residual) {
    ops_.add(a.mid.data(), x, attn_out, N * D);
    mlp_in = a.mid.data();
  }
  ops_.layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), mlp_in,
                         p(pre + "post_attention_layernorm.weight"), p(pre + "post_attention_layernorm.bias"), N, D,
                         config_.layer_norm_eps);
  mlp_forward(s, a, l, a.ln2.data(), mlp_out);
  if (config_.use_parallel_residual)
    ops_.add3(out, x, mlp_out, attn_out, N * D);
  else
    ops_.add(out, a.mid.data(), mlp_out, N * D);
}

// q, k, v [B, H, S, d] of the layer's LayerNorm output, q and k rotated.
template <class Ops>
void GPTNeoXModel<Ops>::project_qkv(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out) {
  const std::string pre = layer_prefix(l);
  const int64_t B = s.batch, S = s.seq, N = B * S, D = config_.hidden_size;
  const int64_t H = config_.num_heads, d = config_.head_dim(), r = config_.rotary_dims();
  const bool bias = config_.attention_bias;
  ops_.linear_forward(s.qkv.data(), ln_out, p(pre + "attention.query_key_value.weight"),
                      bias ? p(pre + "attention.query_key_value.bias") : nullptr, N, D, 3 * D);
  ops_.split_qkv(a.q.data(), a.k.data(), a.v.data(), s.qkv.data(), B, S, H, d);
  const int64_t pos = s.decoding != nullptr ? s.decoding->position : 0;
  ops_.rotary_forward(a.q.data(), B * H, S, d, r, config_.rotary_emb_base, pos);
  ops_.rotary_forward(a.k.data(), B * H, S, d, r, config_.rotary_emb_base, pos);
}

template <class Ops>
void GPTNeoXModel<Ops>::attention_forward(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out,
                                          Act* attn_out) {
  const std::string pre = layer_prefix(l);
  const int64_t B = s.batch, S = s.seq, N = B * S, D = config_.hidden_size;
  const int64_t H = config_.num_heads, d = config_.head_dim();
  const bool bias = config_.attention_bias;
  project_qkv(s, a, l, ln_out);
  DecodeState* const dec = s.decoding;
  const int64_t pos = dec != nullptr ? dec->position : 0;
  const Act* dense_input = a.merged.data();
  if (config_.is_converted()) {
    dense_input = converted_core_forward(s, a, l, ln_out);
  } else {
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    if (dec != nullptr) {
      // The new keys and values join the cache at their positions.
      const int64_t row = dec->capacity * d;
      const auto li = static_cast<size_t>(l);
      ops_.copy_rows(dec->keys[li].data() + pos * d, row, a.k.data(), S * d, B * H, S * d);
      ops_.copy_rows(dec->values[li].data() + pos * d, row, a.v.data(), S * d, B * H, S * d);
    }
    if (dec == nullptr || pos == 0)
      ops_.causal_attention_forward(a.attn.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), B * H, S, d,
                                    scale);
    else
      ops_.cached_attention_step(a.attn.data(), a.q.data(), dec->keys[static_cast<size_t>(l)].data(),
                                 dec->values[static_cast<size_t>(l)].data(), B * H, pos + 1, dec->capacity, d, scale);
    ops_.merge_heads(a.merged.data(), a.attn.data(), B, S, H, d);
  }
  ops_.linear_forward(attn_out, dense_input, p(pre + "attention.dense.weight"),
                      bias ? p(pre + "attention.dense.bias") : nullptr, N, D, D);
}

template <class Ops>
const typename Ops::Act* GPTNeoXModel<Ops>::converted_core_forward(Activations& s, LayerActivations& a, int64_t l,
                                                                   const Act* ln_out) {
  if (config_.is_linear()) {
    linear_core_forward(s, a, l);
    return a.merged.data();
  }
  dijiang_core_forward(s, a, l, ln_out);
  return a.gated.data();
}

// A normalised linear-attention baseline (docs/method.md, section 8): o_i = Σ_{j<=i} ⟨φ(q_i), φ(k_j)⟩ v_j /
// Σ_{j<=i} ⟨φ(q_i), φ(k_j)⟩, both from one pass of the decayed-attention kernels with γ = 1 over [v, 1].
template <class Ops>
void GPTNeoXModel<Ops>::linear_core_forward(Activations& s, LayerActivations& a, int64_t l) {
  const int64_t B = s.batch, S = s.seq, H = config_.num_heads, d = config_.head_dim(), BH = B * H;
  const int64_t m = config_.linear_features();
  const LinearOptions& o = config_.linear;
  DecodeState* const dec = s.decoding;
  const int64_t pos = dec != nullptr ? dec->position : 0;
  const Param* P = o.feature_map == cpu::LinearFeatureMap::Performer ? pm(layer_prefix(l) + "attention.proj_matrix")
                                                                      : nullptr;
  ops_.linear_feature_forward(a.sq.data(), a.q.data(), P, o.feature_map, true, BH, S, d, pos,
                              config_.max_position_embeddings);
  ops_.linear_feature_forward(a.sk.data(), a.k.data(), P, o.feature_map, false, BH, S, d, pos,
                              config_.max_position_embeddings);
  ops_.append_ones(a.vx.data(), a.v.data(), BH * S, d);
  const Param* log_gamma = zero_log_gamma_.data();
  if (dec == nullptr || pos == 0)
    ops_.decay_attention_forward(a.ox.data(), a.sq.data(), a.sk.data(), a.vx.data(), log_gamma, BH, H, S, m, d + 1,
                                 form_, o.chunk);
  if (dec != nullptr && pos == 0)
    ops_.decay_attention_prefill_state(dec->states[static_cast<size_t>(l)].data(), a.sk.data(), a.vx.data(), log_gamma,
                                       BH, H, S, m, d + 1, o.chunk);
  else if (dec != nullptr)
    ops_.decay_attention_step(a.ox.data(), dec->states[static_cast<size_t>(l)].data(), a.sq.data(), a.sk.data(),
                              a.vx.data(), log_gamma, BH, H, m, d + 1);
  ops_.normalize_rows_forward(a.attn.data(), a.ox.data(), BH * S, d);
  ops_.merge_heads(a.merged.data(), a.attn.data(), B, S, H, d);
}

// φ(q), φ(k) = softmax(q·P), softmax(k·P) [⊙ w] (or q, k [⊙ w] without a feature map, the
// RetNet-style variant); o = decayed linear attention; then gated = silu(a · W_G) ⊙ GroupNorm(o)
// feeds the dense projection (docs/method.md, sections 2 and 7).
template <class Ops>
void GPTNeoXModel<Ops>::dijiang_core_forward(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out) {
  const std::string pre = layer_prefix(l);
  const int64_t B = s.batch, S = s.seq, N = B * S, D = config_.hidden_size, H = config_.num_heads;
  const int64_t d = config_.head_dim();
  const DiJiangOptions& o = config_.dijiang;
  const Act* sq = a.q.data();
  const Act* sk = a.k.data();
  if (config_.has_feature_map()) {
    const Param* P = pm(pre + "attention.proj_matrix");
    ops_.feature_map_forward(a.sq.data(), a.q.data(), P, N * H, d);
    ops_.feature_map_forward(a.sk.data(), a.k.data(), P, N * H, d);
    sq = a.sq.data();
    sk = a.sk.data();
  }
  const Act* fq = sq;
  const Act* fk = sk;
  if (o.feature_weights) {
    const Param* w = pm(pre + "attention.feature_weights");
    ops_.feature_weights_forward(a.fq.data(), sq, w, B * H, H, S, d);
    ops_.feature_weights_forward(a.fk.data(), sk, w, B * H, H, S, d);
    fq = a.fq.data();
    fk = a.fk.data();
  }
  const Param* log_gamma = pm(pre + "attention.log_gamma");
  DecodeState* const dec = s.decoding;
  if (dec == nullptr || dec->position == 0)
    ops_.decay_attention_forward(a.attn.data(), fq, fk, a.v.data(), log_gamma, B * H, H, S, d, d, form_, o.chunk);
  if (dec != nullptr && dec->position == 0)
    ops_.decay_attention_prefill_state(dec->states[static_cast<size_t>(l)].data(), fk, a.v.data(), log_gamma, B * H, H,
                                       S, d, d, o.chunk);
  else if (dec != nullptr)
    ops_.decay_attention_step(a.attn.data(), dec->states[static_cast<size_t>(l)].data(), fq, fk, a.v.data(), log_gamma,
                              B * H, H, d, d);
  ops_.merge_heads(a.merged.data(), a.attn.data(), B, S, H, d);
  ops_.matmul(false, false, N, D, D, ln_out, p(pre + "attention.W_G"), a.gate_pre.data());
  ops_.group_norm_gate_forward(a.gated.data(), a.gn_mean.data(), a.gn_rstd.data(), a.merged.data(),
                               pm(pre + "attention.group_norm.weight"), pm(pre + "attention.group_norm.bias"),
                               a.gate_pre.data(), N, D, config_.group_norm_groups(), kGroupNormEps);
}

template <class Ops>
void GPTNeoXModel<Ops>::mlp_forward(Activations& s, LayerActivations& a, int64_t l, const Act* ln_out, Act* mlp_out) {
  const std::string pre = layer_prefix(l);
  const int64_t N = s.batch * s.seq, D = config_.hidden_size, F = config_.intermediate_size;
  ops_.linear_forward(a.pre_gelu.data(), ln_out, p(pre + "mlp.dense_h_to_4h.weight"), p(pre + "mlp.dense_h_to_4h.bias"),
                      N, D, F);
  ops_.gelu_forward(a.post_gelu.data(), a.pre_gelu.data(), N * F, config_.gelu_kind());
  ops_.linear_forward(mlp_out, a.post_gelu.data(), p(pre + "mlp.dense_4h_to_h.weight"),
                      p(pre + "mlp.dense_4h_to_h.bias"), N, F, D);
}

}  // namespace dj

#include "trainer/model/gpt_neox_backward_impl.h"
#include "trainer/model/gpt_neox_decode_impl.h"
