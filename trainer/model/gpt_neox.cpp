#include "trainer/model/gpt_neox.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "kernels/core/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/rotary.h"

namespace dj {

namespace {

// GroupNorm epsilon of the reference DiJiang layer (torch.nn.GroupNorm's default).
constexpr double kGroupNormEps = 1e-5;

template <typename T>
void add_into(T* out, const T* a, const T* b, int64_t n) {
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

// [B, S, H, 3, d] (the fused projection's row layout) <-> three [B, H, S, d] tensors.
template <typename T>
void split_qkv(T* q, T* k, T* v, const T* qkv, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s) {
        const T* row = qkv + ((b * S + s) * H + h) * 3 * d;
        const int64_t o = ((b * H + h) * S + s) * d;
        std::copy(row, row + d, q + o);
        std::copy(row + d, row + 2 * d, k + o);
        std::copy(row + 2 * d, row + 3 * d, v + o);
      }
}

template <typename T>
void join_qkv(T* qkv, const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < S; ++s) {
        T* row = qkv + ((b * S + s) * H + h) * 3 * d;
        const int64_t o = ((b * H + h) * S + s) * d;
        std::copy(q + o, q + o + d, row);
        std::copy(k + o, k + o + d, row + d);
        std::copy(v + o, v + o + d, row + 2 * d);
      }
}

// [B, H, S, d] <-> [B, S, H * d] (heads merged into head-major channels).
template <typename T>
void merge_heads(T* merged, const T* heads, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h) {
        const T* src = heads + ((b * H + h) * S + s) * d;
        std::copy(src, src + d, merged + ((b * S + s) * H + h) * d);
      }
}

template <typename T>
void split_heads(T* heads, const T* merged, int64_t B, int64_t S, int64_t H, int64_t d) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s)
      for (int64_t h = 0; h < H; ++h) {
        const T* src = merged + ((b * S + s) * H + h) * d;
        std::copy(src, src + d, heads + ((b * H + h) * S + s) * d);
      }
}

}  // namespace

template <typename T>
GPTNeoX<T>::GPTNeoX(ModelConfig config)
    : config_(std::move(config)),
      layout_(ParameterLayout::gpt_neox(config_)),
      params_(static_cast<size_t>(layout_.total())),
      segments_(gpt_neox_segments(layout_, config_)) {}

template <typename T>
int64_t GPTNeoX<T>::segment_of(int64_t offset) const {
  const auto it = std::upper_bound(segments_.begin(), segments_.end(), offset,
                                   [](int64_t o, const ParameterSegment& s) { return o < s.end; });
  return it - segments_.begin();
}

template <typename T>
T* GPTNeoX<T>::parameter(const std::string& name) {
  const ParameterView& view = layout_.view(name);
  if (storage_ == nullptr) return params_.data() + view.offset;
  const int64_t s = segment_of(view.offset);
  T* held = held_params_[static_cast<size_t>(s)];
  if (held == nullptr) fail("parameter '{}' used while its segment {} is not acquired", name, s);
  return held + (view.offset - segments_[static_cast<size_t>(s)].begin);
}

template <typename T>
const T* GPTNeoX<T>::parameter(const std::string& name) const {
  return const_cast<GPTNeoX<T>*>(this)->parameter(name);
}

template <typename T>
T* GPTNeoX<T>::gradient(const std::string& name) {
  const ParameterView& view = layout_.view(name);
  if (storage_ == nullptr) return grads_.data() + view.offset;
  const int64_t s = segment_of(view.offset);
  T* held = held_grads_[static_cast<size_t>(s)];
  if (held == nullptr) fail("gradient of '{}' used while its segment {} is not acquired", name, s);
  return held + (view.offset - segments_[static_cast<size_t>(s)].begin);
}

template <typename T>
void GPTNeoX<T>::use_storage(SegmentStorage<T>* storage) {
  storage_ = storage;
  held_params_.assign(segments_.size(), nullptr);
  held_grads_.assign(segments_.size(), nullptr);
  std::vector<T>().swap(grads_);
  if (storage != nullptr) std::vector<T>().swap(params_);
  else params_.assign(static_cast<size_t>(layout_.total()), T(0));
}

template <typename T>
void GPTNeoX<T>::hold_parameters(int64_t segment) {
  if (storage_) held_params_[static_cast<size_t>(segment)] = storage_->acquire_parameters(segment);
}

template <typename T>
void GPTNeoX<T>::drop_parameters(int64_t segment) {
  if (!storage_) return;
  storage_->release_parameters(segment);
  held_params_[static_cast<size_t>(segment)] = nullptr;
}

template <typename T>
void GPTNeoX<T>::hold_gradients(int64_t segment) {
  if (storage_) held_grads_[static_cast<size_t>(segment)] = storage_->acquire_gradients(segment);
}

template <typename T>
void GPTNeoX<T>::drop_gradients(int64_t segment) {
  if (!storage_) return;
  storage_->release_gradients(segment);
  held_grads_[static_cast<size_t>(segment)] = nullptr;
}

template <typename T>
void GPTNeoX<T>::load(const TensorMap& tensors, const std::string& source) {
  if (storage_) fail("load: the model's parameters are held by a segment storage");
  check_tensors(layout_, config_, tensors, source);
  for (const auto& view : layout_.views()) {
    const Tensor converted = tensors.at(view.name).to(dtype_of<T>());
    std::memcpy(params_.data() + view.offset, converted.bytes(), converted.nbytes());
  }
}

template <typename T>
TensorMap GPTNeoX<T>::to_tensors(DType dtype) const {
  if (!is_floating(dtype)) fail("parameters can only be written as a floating dtype, not {}", dtype_name(dtype));
  if (storage_) fail("to_tensors: the model's parameters are held by a segment storage");
  TensorMap out;
  for (const auto& view : layout_.views()) {
    Tensor t(dtype_of<T>(), view.shape);
    std::memcpy(t.bytes(), params_.data() + view.offset, t.nbytes());
    out.emplace(view.name, dtype == dtype_of<T>() ? t : t.to(dtype));
  }
  return out;
}

template <typename T>
const T* GPTNeoX<T>::output_embedding() const {
  return parameter(config_.tie_word_embeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight");
}

template <typename T>
T* GPTNeoX<T>::output_embedding_gradient() {
  return gradient(config_.tie_word_embeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight");
}

template <typename T>
void GPTNeoX<T>::zero_gradients() {
  if (storage_) fail("zero_gradients: gradients are held by a segment storage");
  grads_.assign(params_.size(), T(0));
}

template <typename T>
void GPTNeoX<T>::resize_activations(int64_t batch, int64_t seq) {
  Activations& a = acts_;
  if (a.batch == batch && a.seq == seq) return;
  const auto N = static_cast<size_t>(batch * seq);
  const auto D = static_cast<size_t>(config_.hidden_size);
  const auto F = static_cast<size_t>(config_.intermediate_size);
  const auto H = static_cast<size_t>(config_.num_heads);
  const auto V = static_cast<size_t>(config_.vocab_size);
  a.batch = batch;
  a.seq = seq;
  a.ids.resize(N);
  a.targets.resize(N);
  a.layers.resize(static_cast<size_t>(config_.num_layers));
  const bool dijiang = config_.is_dijiang(), weights = dijiang && config_.dijiang.feature_weights;
  const auto groups = static_cast<size_t>(dijiang ? config_.group_norm_groups() : 0);
  for (auto& l : a.layers) {
    for (auto* v : {&l.input, &l.ln1, &l.q, &l.k, &l.v, &l.attn, &l.merged, &l.ln2}) v->resize(N * D);
    for (auto* v : {&l.sq, &l.sk, &l.gn, &l.gate_pre, &l.gated}) v->resize(dijiang ? N * D : 0);
    for (auto* v : {&l.fq, &l.fk}) v->resize(weights ? N * D : 0);
    for (auto* v : {&l.gn_mean, &l.gn_rstd}) v->resize(N * groups);
    for (auto* v : {&l.ln1_mean, &l.ln1_rstd, &l.ln2_mean, &l.ln2_rstd}) v->resize(N);
    l.lse.resize(N * H);
    l.mid.resize(config_.use_parallel_residual ? 0 : N * D);
    l.pre_gelu.resize(N * F);
    l.post_gelu.resize(N * F);
  }
  for (auto* v : {&a.final_input, &a.final_ln, &a.dq, &a.dk, &a.dv, &a.dattn, &a.nd_a, &a.nd_b,
                  &a.nd_c, &a.dres_a, &a.dres_b})
    v->resize(N * D);
  for (auto* v : {&a.dfeature, &a.nd_d}) v->resize(dijiang ? N * D : 0);
  a.final_mean.resize(N);
  a.final_rstd.resize(N);
  a.qkv.resize(N * 3 * D);
  a.nf.resize(N * F);
  a.logits.resize(N * V);
}

template <typename T>
double GPTNeoX<T>::forward(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward,
                           double gradient_weight) {
  const LossSum loss = forward_loss_sum(ids, batch, seq, for_backward, gradient_weight);
  return loss.count > 0 ? loss.sum / static_cast<double>(loss.count) : 0.0;
}

template <typename T>
typename GPTNeoX<T>::LossSum GPTNeoX<T>::forward_loss_sum(const int32_t* ids, int64_t batch, int64_t seq,
                                                           bool for_backward, double gradient_weight) {
  if (batch <= 0 || seq <= 0) fail("forward needs a positive batch and sequence length, got {}x{}", batch, seq);
  resize_activations(batch, seq);
  Activations& a = acts_;
  const int64_t N = batch * seq, D = config_.hidden_size, V = config_.vocab_size;
  std::copy(ids, ids + N, a.ids.begin());
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s)
      a.targets[static_cast<size_t>(b * seq + s)] = s + 1 < seq ? ids[b * seq + s + 1] : -1;
  a.predictions = batch * (seq - 1);
  a.gradient_weight = gradient_weight;

  const bool tied = config_.tie_word_embeddings;
  hold_parameters(0);
  cpu::embedding_forward(a.layers[0].input.data(), ids, parameter("gpt_neox.embed_in.weight"), N, V, D);
  if (!tied) drop_parameters(0);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    T* out = l + 1 < config_.num_layers ? a.layers[static_cast<size_t>(l + 1)].input.data() : a.final_input.data();
    hold_parameters(l + 1);
    layer_forward(l, a.layers[static_cast<size_t>(l)].input.data(), out);
    drop_parameters(l + 1);
  }
  hold_parameters(head_segment());
  cpu::layernorm_forward(a.final_ln.data(), a.final_mean.data(), a.final_rstd.data(), a.final_input.data(),
                         parameter("gpt_neox.final_layer_norm.weight"),
                         parameter("gpt_neox.final_layer_norm.bias"), N, D, config_.layer_norm_eps);
  cpu::linear_forward<T>(a.logits.data(), a.final_ln.data(), output_embedding(), nullptr, N, D, V);
  drop_parameters(head_segment());
  if (tied) drop_parameters(0);
  // Without for_backward the logits stay intact for the caller and a later backward computes
  // their gradient; with it the gradient of the weighted mean loss replaces them now.
  const T grad_scale =
      a.predictions > 0 ? static_cast<T>(gradient_weight / static_cast<double>(a.predictions)) : T(0);
  LossSum loss;
  const auto result =
      cpu::softmax_cross_entropy<T>(a.logits.data(), a.targets.data(), N, V, for_backward, grad_scale);
  a.logits_state = for_backward ? Activations::LogitsState::Gradient : Activations::LogitsState::Logits;
  loss.sum = result.loss_sum;
  loss.count = result.count;
  return loss;
}

template <typename T>
void GPTNeoX<T>::layer_forward(int64_t l, const T* x, T* out) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string p = layer_prefix(l);
  const int64_t N = acts_.batch * acts_.seq, D = config_.hidden_size;
  T* attn_out = acts_.nd_a.data();
  T* mlp_out = acts_.nd_b.data();
  cpu::layernorm_forward(a.ln1.data(), a.ln1_mean.data(), a.ln1_rstd.data(), x,
                         parameter(p + "input_layernorm.weight"), parameter(p + "input_layernorm.bias"),
                         N, D, config_.layer_norm_eps);
  attention_forward(l, a.ln1.data(), attn_out);
  // Parallel residual: LN2 reads the layer input; sequential: it reads x + attention.
  const T* mlp_in = x;
  if (!config_.use_parallel_residual) {
    add_into(a.mid.data(), x, attn_out, N * D);
    mlp_in = a.mid.data();
  }
  cpu::layernorm_forward(a.ln2.data(), a.ln2_mean.data(), a.ln2_rstd.data(), mlp_in,
                         parameter(p + "post_attention_layernorm.weight"),
                         parameter(p + "post_attention_layernorm.bias"), N, D, config_.layer_norm_eps);
  mlp_forward(l, a.ln2.data(), mlp_out);
  if (config_.use_parallel_residual) {
#pragma omp parallel for schedule(static)
    for (int64_t i = 0; i < N * D; ++i) out[i] = x[i] + (mlp_out[i] + attn_out[i]);
  } else {
    add_into(out, a.mid.data(), mlp_out, N * D);
  }
}

template <typename T>
void GPTNeoX<T>::attention_forward(int64_t l, const T* ln_out, T* attn_out) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string p = layer_prefix(l);
  const int64_t B = acts_.batch, S = acts_.seq, N = B * S, D = config_.hidden_size;
  const int64_t H = config_.num_heads, d = config_.head_dim(), r = config_.rotary_dims();
  const T* qkv_bias = config_.attention_bias ? parameter(p + "attention.query_key_value.bias") : nullptr;
  const T* dense_bias = config_.attention_bias ? parameter(p + "attention.dense.bias") : nullptr;
  cpu::linear_forward(acts_.qkv.data(), ln_out, parameter(p + "attention.query_key_value.weight"), qkv_bias, N, D, 3 * D);
  split_qkv(a.q.data(), a.k.data(), a.v.data(), acts_.qkv.data(), B, S, H, d);
  cpu::rotary_forward(a.q.data(), B * H, S, d, r, config_.rotary_emb_base);
  cpu::rotary_forward(a.k.data(), B * H, S, d, r, config_.rotary_emb_base);
  if (config_.is_dijiang()) {
    dijiang_core_forward(l, ln_out, B, S);
    cpu::linear_forward(attn_out, a.gated.data(), parameter(p + "attention.dense.weight"), dense_bias, N, D, D);
  } else {
    softmax_core_forward(a, B, S);
    cpu::linear_forward(attn_out, a.merged.data(), parameter(p + "attention.dense.weight"), dense_bias, N, D, D);
  }
}

template <typename T>
void GPTNeoX<T>::softmax_core_forward(LayerActivations& a, int64_t B, int64_t S) {
  const int64_t H = config_.num_heads, d = config_.head_dim();
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  cpu::causal_attention_forward(a.attn.data(), a.lse.data(), a.q.data(), a.k.data(), a.v.data(), B * H, S, d, scale);
  merge_heads(a.merged.data(), a.attn.data(), B, S, H, d);
}

namespace {
cpu::DecayForm decay_form(const std::string& name) {
  if (name == "parallel") return cpu::DecayForm::Parallel;
  if (name == "recurrent") return cpu::DecayForm::Recurrent;
  return cpu::DecayForm::Chunkwise;
}
}  // namespace

// φ(q), φ(k) = softmax(q·P), softmax(k·P) [⊙ w]; o = decayed linear attention; then
// gated = silu(a · W_G) ⊙ GroupNorm(o) feeds the dense projection (dijiang.md, section 2).
template <typename T>
void GPTNeoX<T>::dijiang_core_forward(int64_t l, const T* ln_out, int64_t B, int64_t S) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string p = layer_prefix(l);
  const int64_t N = B * S, D = config_.hidden_size, H = config_.num_heads, d = config_.head_dim();
  const DiJiangOptions& o = config_.dijiang;
  const T* P = parameter(p + "attention.proj_matrix");
  cpu::feature_map_forward(a.sq.data(), a.q.data(), P, N * H, d);
  cpu::feature_map_forward(a.sk.data(), a.k.data(), P, N * H, d);
  const T* fq = a.sq.data();
  const T* fk = a.sk.data();
  if (o.feature_weights) {
    const T* w = parameter(p + "attention.feature_weights");
    cpu::feature_weights_forward(a.fq.data(), a.sq.data(), w, B * H, H, S, d);
    cpu::feature_weights_forward(a.fk.data(), a.sk.data(), w, B * H, H, S, d);
    fq = a.fq.data();
    fk = a.fk.data();
  }
  cpu::decay_attention_forward(a.attn.data(), fq, fk, a.v.data(), parameter(p + "attention.log_gamma"), B * H, H, S,
                               d, d, decay_form(o.form), o.chunk);
  merge_heads(a.merged.data(), a.attn.data(), B, S, H, d);
  cpu::group_norm_forward(a.gn.data(), a.gn_mean.data(), a.gn_rstd.data(), a.merged.data(),
                          parameter(p + "attention.group_norm.weight"), parameter(p + "attention.group_norm.bias"),
                          N, D, config_.group_norm_groups(), kGroupNormEps);
  cpu::gemm<T>(false, false, N, D, D, T(1), ln_out, parameter(p + "attention.W_G"), T(0), a.gate_pre.data());
  cpu::silu_gate_forward(a.gated.data(), a.gate_pre.data(), a.gn.data(), N * D);
}

template <typename T>
void GPTNeoX<T>::mlp_forward(int64_t l, const T* ln_out, T* mlp_out) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string p = layer_prefix(l);
  const int64_t N = acts_.batch * acts_.seq, D = config_.hidden_size, F = config_.intermediate_size;
  cpu::linear_forward(a.pre_gelu.data(), ln_out, parameter(p + "mlp.dense_h_to_4h.weight"),
                      parameter(p + "mlp.dense_h_to_4h.bias"), N, D, F);
  cpu::gelu_forward(a.post_gelu.data(), a.pre_gelu.data(), N * F, config_.gelu_kind());
  cpu::linear_forward(mlp_out, a.post_gelu.data(), parameter(p + "mlp.dense_4h_to_h.weight"),
                      parameter(p + "mlp.dense_4h_to_h.bias"), N, F, D);
}

template <typename T>
void GPTNeoX<T>::backward() {
  Activations& a = acts_;
  if (a.logits_state == Activations::LogitsState::Consumed) fail("backward needs a fresh forward pass first");
  const int64_t N = a.batch * a.seq, D = config_.hidden_size, V = config_.vocab_size;
  if (!storage_ && grads_.size() != params_.size()) zero_gradients();
  if (a.logits_state == Activations::LogitsState::Logits) {
    const T grad_scale =
        a.predictions > 0 ? static_cast<T>(a.gradient_weight / static_cast<double>(a.predictions)) : T(0);
    cpu::softmax_cross_entropy<T>(a.logits.data(), a.targets.data(), N, V, true, grad_scale);
  }
  a.logits_state = Activations::LogitsState::Consumed;
  // Sequences of one token predict nothing; a storage still sees every segment (its collectives
  // need every rank), with zero gradients.
  if (a.predictions == 0 && !storage_) return;

  const bool tied = config_.tie_word_embeddings;
  hold_parameters(head_segment());
  hold_gradients(head_segment());
  if (tied) {
    hold_parameters(0);
    hold_gradients(0);
  }
  T* dfinal_ln = a.nd_a.data();
  cpu::linear_backward<T>(dfinal_ln, output_embedding_gradient(), nullptr, a.logits.data(), a.final_ln.data(),
                          output_embedding(), N, D, V, false);
  std::fill(a.dres_a.begin(), a.dres_a.end(), T(0));
  cpu::layernorm_backward(a.dres_a.data(), gradient("gpt_neox.final_layer_norm.weight"),
                          gradient("gpt_neox.final_layer_norm.bias"), dfinal_ln, a.final_input.data(),
                          parameter("gpt_neox.final_layer_norm.weight"), a.final_mean.data(),
                          a.final_rstd.data(), N, D);
  drop_gradients(head_segment());
  drop_parameters(head_segment());
  T* dout = a.dres_a.data();
  T* dx = a.dres_b.data();
  for (int64_t l = config_.num_layers - 1; l >= 0; --l) {
    hold_parameters(l + 1);
    hold_gradients(l + 1);
    layer_backward(l, dout, dx);
    drop_gradients(l + 1);
    drop_parameters(l + 1);
    std::swap(dout, dx);
  }
  if (!tied) hold_gradients(0);
  cpu::embedding_backward(gradient("gpt_neox.embed_in.weight"), dout, a.ids.data(), N, D);
  drop_gradients(0);
  if (tied) drop_parameters(0);
}

template <typename T>
void GPTNeoX<T>::layer_backward(int64_t l, const T* dout, T* dx) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string p = layer_prefix(l);
  const int64_t N = acts_.batch * acts_.seq, D = config_.hidden_size;
  T* dln = acts_.nd_b.data();
  const auto ln_backward = [&](T* dinput, const std::string& name, const T* input, const T* mean, const T* rstd) {
    cpu::layernorm_backward(dinput, gradient(p + name + ".weight"), gradient(p + name + ".bias"), dln, input,
                            parameter(p + name + ".weight"), mean, rstd, N, D);
  };
  // Parallel: out = x + attn(LN1 x) + mlp(LN2 x). Sequential: mid = x + attn(LN1 x),
  // out = mid + mlp(LN2 mid). In both, the residual carries dout straight through.
  std::copy(dout, dout + N * D, dx);
  mlp_backward(l, dout, dln);
  if (config_.use_parallel_residual) {
    ln_backward(dx, "post_attention_layernorm", a.input.data(), a.ln2_mean.data(), a.ln2_rstd.data());
    attention_backward(l, dout, dln);
  } else {
    ln_backward(dx, "post_attention_layernorm", a.mid.data(), a.ln2_mean.data(), a.ln2_rstd.data());
    attention_backward(l, dx, dln);  // dx now holds d mid
  }
  ln_backward(dx, "input_layernorm", a.input.data(), a.ln1_mean.data(), a.ln1_rstd.data());
}

template <typename T>
void GPTNeoX<T>::attention_backward(int64_t l, const T* dattn_out, T* dln) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string p = layer_prefix(l);
  const int64_t B = acts_.batch, S = acts_.seq, N = B * S, D = config_.hidden_size;
  const int64_t H = config_.num_heads, d = config_.head_dim(), r = config_.rotary_dims();
  const bool bias = config_.attention_bias;
  // d(input of the dense projection) lands in nd_c.
  const T* dense_input = config_.is_dijiang() ? a.gated.data() : a.merged.data();
  cpu::linear_backward<T>(acts_.nd_c.data(), gradient(p + "attention.dense.weight"),
                          bias ? gradient(p + "attention.dense.bias") : nullptr, dattn_out, dense_input,
                          parameter(p + "attention.dense.weight"), N, D, D, false);
  if (config_.is_dijiang())
    dijiang_core_backward(l, dln, B, S);
  else
    softmax_core_backward(a, B, S);
  cpu::rotary_backward(acts_.dq.data(), B * H, S, d, r, config_.rotary_emb_base);
  cpu::rotary_backward(acts_.dk.data(), B * H, S, d, r, config_.rotary_emb_base);
  join_qkv(acts_.qkv.data(), acts_.dq.data(), acts_.dk.data(), acts_.dv.data(), B, S, H, d);
  // DiJiang's gate already wrote its share of d(ln_out) into dln; the projection adds to it.
  cpu::linear_backward<T>(dln, gradient(p + "attention.query_key_value.weight"),
                          bias ? gradient(p + "attention.query_key_value.bias") : nullptr, acts_.qkv.data(),
                          a.ln1.data(), parameter(p + "attention.query_key_value.weight"), N, D, 3 * D,
                          config_.is_dijiang());
}

template <typename T>
void GPTNeoX<T>::softmax_core_backward(LayerActivations& a, int64_t B, int64_t S) {
  const int64_t H = config_.num_heads, d = config_.head_dim();
  split_heads(acts_.dattn.data(), acts_.nd_c.data(), B, S, H, d);
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  cpu::causal_attention_backward(acts_.dq.data(), acts_.dk.data(), acts_.dv.data(), acts_.dattn.data(), a.q.data(),
                                 a.k.data(), a.v.data(), a.attn.data(), a.lse.data(), B * H, S, d, scale);
}

// Reverses dijiang_core_forward: from d(gated) in nd_c to dq, dk, dv (rotated q and k) and the
// gate's contribution to d(ln_out), written to dln.
template <typename T>
void GPTNeoX<T>::dijiang_core_backward(int64_t l, T* dln, int64_t B, int64_t S) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  Activations& s = acts_;
  const std::string p = layer_prefix(l);
  const int64_t N = B * S, D = config_.hidden_size, H = config_.num_heads, d = config_.head_dim();
  const DiJiangOptions& o = config_.dijiang;
  T* dgate = s.nd_a.data();
  T* dgn = s.nd_d.data();
  cpu::silu_gate_backward(dgate, dgn, s.nd_c.data(), a.gate_pre.data(), a.gn.data(), N * D);
  cpu::group_norm_backward(s.nd_c.data(), gradient(p + "attention.group_norm.weight"),
                           gradient(p + "attention.group_norm.bias"), dgn, a.merged.data(),
                           parameter(p + "attention.group_norm.weight"), a.gn_mean.data(), a.gn_rstd.data(), N, D,
                           config_.group_norm_groups());
  split_heads(s.dattn.data(), s.nd_c.data(), B, S, H, d);
  const T* fq = o.feature_weights ? a.fq.data() : a.sq.data();
  const T* fk = o.feature_weights ? a.fk.data() : a.sk.data();
  const T* log_gamma = parameter(p + "attention.log_gamma");
  cpu::decay_attention_backward(s.dq.data(), s.dk.data(), s.dv.data(),
                                o.learnable_decay ? gradient(p + "attention.log_gamma") : nullptr, s.dattn.data(), fq,
                                fk, a.v.data(), log_gamma, B * H, H, S, d, d, decay_form(o.form), o.chunk);
  // d(features) -> d(softmax outputs) -> d(rotated q, k), each in place through dfeature.
  const T* P = parameter(p + "attention.proj_matrix");
  for (auto [dx, softmax_out] : {std::pair{s.dq.data(), a.sq.data()}, std::pair{s.dk.data(), a.sk.data()}}) {
    if (o.feature_weights)
      cpu::feature_weights_backward(s.dfeature.data(), gradient(p + "attention.feature_weights"), dx, softmax_out,
                                    parameter(p + "attention.feature_weights"), B * H, H, S, d);
    else
      std::copy(dx, dx + N * D, s.dfeature.begin());
    cpu::feature_map_backward(dx, s.dfeature.data(), softmax_out, P, N * H, d);
  }
  // gate_pre = ln_out · W_G: dW_G += ln_outᵀ · dgate, d(ln_out) = dgate · W_Gᵀ.
  cpu::gemm<T>(true, false, D, D, N, T(1), a.ln1.data(), dgate, T(1), gradient(p + "attention.W_G"));
  cpu::gemm<T>(false, true, N, D, D, T(1), dgate, parameter(p + "attention.W_G"), T(0), dln);
}

template <typename T>
void GPTNeoX<T>::mlp_backward(int64_t l, const T* dmlp_out, T* dln) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string p = layer_prefix(l);
  const int64_t N = acts_.batch * acts_.seq, D = config_.hidden_size, F = config_.intermediate_size;
  T* dhidden = acts_.nf.data();
  cpu::linear_backward<T>(dhidden, gradient(p + "mlp.dense_4h_to_h.weight"), gradient(p + "mlp.dense_4h_to_h.bias"),
                          dmlp_out, a.post_gelu.data(), parameter(p + "mlp.dense_4h_to_h.weight"), N, F, D, false);
  cpu::gelu_backward(dhidden, dhidden, a.pre_gelu.data(), N * F, config_.gelu_kind());
  cpu::linear_backward<T>(dln, gradient(p + "mlp.dense_h_to_4h.weight"), gradient(p + "mlp.dense_h_to_4h.bias"),
                          dhidden, a.ln2.data(), parameter(p + "mlp.dense_h_to_4h.weight"), N, D, F, false);
}

template class GPTNeoX<float>;
template class GPTNeoX<double>;

}  // namespace dj
