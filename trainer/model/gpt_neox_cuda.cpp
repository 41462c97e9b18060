#include "trainer/model/gpt_neox_cuda.h"
#if DIJIANG_HAVE_CUDA

#include <cmath>
#include <type_traits>
#include <utility>

#include "kernels/core/error.h"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/dijiang_attention.h"
#include "kernels/cuda/layout.h"
#include "kernels/cuda/ops.h"

namespace dj {

namespace {

// GroupNorm epsilon of the reference DiJiang layer (torch.nn.GroupNorm's default), as on the CPU.
constexpr float kGroupNormEps = 1e-5f;

cuda::GeluKind gelu_kind(const ModelConfig& config) {
  return config.gelu_kind() == cpu::GeluKind::Tanh ? cuda::GeluKind::Tanh : cuda::GeluKind::Erf;
}

template <typename T>
void copy_device(T* dst, const T* src, int64_t n, cudaStream_t stream) {
  DJ_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(T), cudaMemcpyDeviceToDevice, stream));
}

}  // namespace

template <typename T>
DeviceArray<T>::DeviceArray(size_t count) : count_(count) {
  if (count > 0) DJ_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)));
}

template <typename T>
DeviceArray<T>::~DeviceArray() {
  if (data_ != nullptr) cudaFree(data_);
}

template <typename T>
DeviceArray<T>::DeviceArray(DeviceArray&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)), count_(std::exchange(other.count_, 0)) {}

template <typename T>
DeviceArray<T>& DeviceArray<T>::operator=(DeviceArray&& other) noexcept {
  std::swap(data_, other.data_);
  std::swap(count_, other.count_);
  return *this;
}

template class DeviceArray<float>;
template class DeviceArray<__nv_bfloat16>;
template class DeviceArray<int32_t>;
template class DeviceArray<uint8_t>;

template <typename T>
GPTNeoXCuda<T>::GPTNeoXCuda(ModelConfig config, cudaStream_t stream)
    : config_(std::move(config)),
      layout_(ParameterLayout::gpt_neox(config_)),
      stream_(stream),
      blas_(std::make_unique<cuda::Blas>()),
      master_(static_cast<size_t>(layout_.total())),
      grads_(static_cast<size_t>(layout_.total())) {
  if constexpr (!std::is_same_v<T, float>) copy_ = DeviceArray<T>(static_cast<size_t>(layout_.total()));
  zero_gradients();
}

template <typename T>
GPTNeoXCuda<T>::~GPTNeoXCuda() = default;

template <typename T>
void GPTNeoXCuda<T>::upload_parameters(const float* host) {
  DJ_CUDA_CHECK(cudaMemcpyAsync(master_.get(), host, master_.size() * sizeof(float), cudaMemcpyHostToDevice, stream_));
  refresh_parameters();
  DJ_CUDA_CHECK(cudaStreamSynchronize(stream_));
}

template <typename T>
std::vector<float> GPTNeoXCuda<T>::download_parameters() const {
  std::vector<float> host(master_.size());
  DJ_CUDA_CHECK(cudaMemcpyAsync(host.data(), master_.get(), host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  DJ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return host;
}

template <typename T>
std::vector<float> GPTNeoXCuda<T>::download_gradients() const {
  std::vector<float> host(grads_.size());
  DJ_CUDA_CHECK(cudaMemcpyAsync(host.data(), grads_.get(), host.size() * sizeof(float), cudaMemcpyDeviceToHost, stream_));
  DJ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  return host;
}

template <typename T>
std::vector<float> GPTNeoXCuda<T>::download_logits() const {
  std::vector<T> raw(logits_.size());
  DJ_CUDA_CHECK(cudaMemcpyAsync(raw.data(), logits_.get(), raw.size() * sizeof(T), cudaMemcpyDeviceToHost, stream_));
  DJ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<float> host(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) host[i] = static_cast<float>(raw[i]);
  return host;
}

template <typename T>
void GPTNeoXCuda<T>::refresh_parameters() {
  if constexpr (!std::is_same_v<T, float>) cuda::convert(copy_.get(), master_.get(), layout_.total(), stream_);
}

template <typename T>
void GPTNeoXCuda<T>::zero_gradients() {
  DJ_CUDA_CHECK(cudaMemsetAsync(grads_.get(), 0, grads_.size() * sizeof(float), stream_));
}

template <typename T>
const T* GPTNeoXCuda<T>::p(const std::string& name) const {
  const int64_t offset = layout_.view(name).offset;
  if constexpr (std::is_same_v<T, float>)
    return master_.get() + offset;
  else
    return copy_.get() + offset;
}

template <typename T>
const float* GPTNeoXCuda<T>::pf(const std::string& name) const {
  return master_.get() + layout_.view(name).offset;
}

template <typename T>
float* GPTNeoXCuda<T>::g(const std::string& name) {
  return grads_.get() + layout_.view(name).offset;
}

template <typename T>
const T* GPTNeoXCuda<T>::output_embedding() const {
  return p(config_.tie_word_embeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight");
}

template <typename T>
float* GPTNeoXCuda<T>::output_embedding_gradient() {
  return g(config_.tie_word_embeddings ? "gpt_neox.embed_in.weight" : "embed_out.weight");
}

template <typename T>
void GPTNeoXCuda<T>::resize(int64_t batch, int64_t seq) {
  if (batch == batch_ && seq == seq_) return;
  const auto N = static_cast<size_t>(batch * seq);
  const auto D = static_cast<size_t>(config_.hidden_size);
  const auto F = static_cast<size_t>(config_.intermediate_size);
  const auto H = static_cast<size_t>(config_.num_heads);
  const auto V = static_cast<size_t>(config_.vocab_size);
  const bool dijiang = config_.is_dijiang(), weights = dijiang && config_.dijiang.feature_weights;
  const auto groups = static_cast<size_t>(dijiang ? config_.group_norm_groups() : 0);
  batch_ = batch;
  seq_ = seq;
  ids_ = DeviceArray<int32_t>(N);
  targets_ = DeviceArray<int32_t>(N);
  layers_.clear();
  layers_.resize(static_cast<size_t>(config_.num_layers));
  for (Layer& l : layers_) {
    for (auto* a : {&l.input, &l.ln1, &l.q, &l.k, &l.v, &l.attn, &l.merged, &l.ln2}) *a = DeviceArray<T>(N * D);
    l.mid = DeviceArray<T>(config_.use_parallel_residual ? 0 : N * D);
    l.pre_gelu = DeviceArray<T>(N * F);
    l.post_gelu = DeviceArray<T>(N * F);
    for (auto* a : {&l.ln1_mean, &l.ln1_rstd, &l.ln2_mean, &l.ln2_rstd}) *a = DeviceArray<float>(N);
    l.lse = DeviceArray<float>(dijiang ? 0 : N * H);
    for (auto* a : {&l.sq, &l.sk, &l.gate_pre, &l.gated}) *a = DeviceArray<T>(dijiang ? N * D : 0);
    for (auto* a : {&l.fq, &l.fk}) *a = DeviceArray<T>(weights ? N * D : 0);
    for (auto* a : {&l.gn_mean, &l.gn_rstd}) *a = DeviceArray<float>(N * groups);
  }
  for (auto* a : {&final_input_, &final_ln_, &dq_, &dk_, &dv_, &dattn_, &nd_a_, &nd_b_, &nd_c_, &dres_a_, &dres_b_})
    *a = DeviceArray<T>(N * D);
  for (auto* a : {&dfeature_, &nd_d_}) *a = DeviceArray<T>(dijiang ? N * D : 0);
  final_mean_ = DeviceArray<float>(N);
  final_rstd_ = DeviceArray<float>(N);
  qkv_ = DeviceArray<T>(N * 3 * D);
  nf_ = DeviceArray<T>(N * F);
  logits_ = DeviceArray<T>(N * V);
  if (!rotary_ || rotary_->max_len() < seq)
    rotary_ = std::make_unique<cuda::RotaryTable>(seq, config_.rotary_dims(), config_.rotary_emb_base);
}

template <typename T>
double GPTNeoXCuda<T>::forward(const int32_t* ids, int64_t batch, int64_t seq, bool for_backward,
                               double gradient_weight) {
  const LossSum loss = forward_loss_sum(ids, batch, seq, for_backward, gradient_weight);
  return loss.count > 0 ? loss.sum / static_cast<double>(loss.count) : 0.0;
}

template <typename T>
typename GPTNeoXCuda<T>::LossSum GPTNeoXCuda<T>::forward_loss_sum(const int32_t* ids, int64_t batch, int64_t seq,
                                                                   bool for_backward, double gradient_weight) {
  if (batch <= 0 || seq <= 0) fail("forward needs a positive batch and sequence length, got {}x{}", batch, seq);
  const int64_t N = batch * seq, D = config_.hidden_size, V = config_.vocab_size;
  // A kernel cannot refuse an id, so the host checks them (as the CPU embedding does).
  for (int64_t i = 0; i < N; ++i)
    if (ids[i] < 0 || ids[i] >= V) fail("token id {} at index {} is outside the vocabulary of {}", ids[i], i, V);
  resize(batch, seq);
  std::vector<int32_t> targets(static_cast<size_t>(N));
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t s = 0; s < seq; ++s)
      targets[static_cast<size_t>(b * seq + s)] = s + 1 < seq ? ids[b * seq + s + 1] : -1;
  DJ_CUDA_CHECK(cudaMemcpyAsync(ids_.get(), ids, static_cast<size_t>(N) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_));
  DJ_CUDA_CHECK(cudaMemcpyAsync(targets_.get(), targets.data(), targets.size() * sizeof(int32_t),
                                cudaMemcpyHostToDevice, stream_));
  predictions_ = batch * (seq - 1);
  gradient_weight_ = gradient_weight;

  cuda::embedding_forward(layers_[0].input.get(), ids_.get(), p("gpt_neox.embed_in.weight"), N, V, D, stream_);
  for (int64_t l = 0; l < config_.num_layers; ++l) {
    T* out = l + 1 < config_.num_layers ? layers_[static_cast<size_t>(l + 1)].input.get() : final_input_.get();
    layer_forward(l, layers_[static_cast<size_t>(l)].input.get(), out);
  }
  cuda::layernorm_forward(final_ln_.get(), final_mean_.get(), final_rstd_.get(), final_input_.get(),
                          p("gpt_neox.final_layer_norm.weight"), p("gpt_neox.final_layer_norm.bias"), N, D,
                          config_.layer_norm_eps, stream_);
  cuda::linear_forward<T>(*blas_, logits_.get(), final_ln_.get(), output_embedding(), nullptr, N, D, V, stream_);
  const float grad_scale =
      predictions_ > 0 ? static_cast<float>(gradient_weight / static_cast<double>(predictions_)) : 0.0f;
  const cuda::CrossEntropyResult result =
      cuda::softmax_cross_entropy<T>(logits_.get(), targets_.get(), N, V, for_backward, grad_scale, stream_);
  logits_state_ = for_backward ? LogitsState::Gradient : LogitsState::Logits;
  return {result.loss_sum, result.count};
}

template <typename T>
void GPTNeoXCuda<T>::layer_forward(int64_t l, const T* x, T* out) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t N = batch_ * seq_, D = config_.hidden_size;
  T* attn_out = nd_a_.get();
  T* mlp_out = nd_b_.get();
  cuda::layernorm_forward(a.ln1.get(), a.ln1_mean.get(), a.ln1_rstd.get(), x, p(pre + "input_layernorm.weight"),
                          p(pre + "input_layernorm.bias"), N, D, config_.layer_norm_eps, stream_);
  attention_forward(l, a.ln1.get(), attn_out);
  // Parallel residual: LN2 reads the layer input; sequential: it reads x + attention.
  const T* mlp_in = x;
  if (!config_.use_parallel_residual) {
    cuda::add(a.mid.get(), x, attn_out, N * D, stream_);
    mlp_in = a.mid.get();
  }
  cuda::layernorm_forward(a.ln2.get(), a.ln2_mean.get(), a.ln2_rstd.get(), mlp_in,
                          p(pre + "post_attention_layernorm.weight"), p(pre + "post_attention_layernorm.bias"), N,
                          D, config_.layer_norm_eps, stream_);
  mlp_forward(l, a.ln2.get(), mlp_out);
  if (config_.use_parallel_residual)
    cuda::add3(out, x, mlp_out, attn_out, N * D, stream_);
  else
    cuda::add(out, a.mid.get(), mlp_out, N * D, stream_);
}

template <typename T>
void GPTNeoXCuda<T>::attention_forward(int64_t l, const T* ln_out, T* attn_out) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t B = batch_, S = seq_, N = B * S, D = config_.hidden_size;
  const int64_t H = config_.num_heads, d = config_.head_dim();
  const bool bias = config_.attention_bias;
  cuda::linear_forward<T>(*blas_, qkv_.get(), ln_out, p(pre + "attention.query_key_value.weight"),
                          bias ? p(pre + "attention.query_key_value.bias") : nullptr, N, D, 3 * D, stream_);
  cuda::split_qkv(a.q.get(), a.k.get(), a.v.get(), qkv_.get(), B, S, H, d, stream_);
  cuda::rotary_forward(a.q.get(), *rotary_, B * H, S, d, stream_);
  cuda::rotary_forward(a.k.get(), *rotary_, B * H, S, d, stream_);
  const T* dense_input = a.merged.get();
  if (config_.is_dijiang()) {
    dijiang_core_forward(l, ln_out);
    dense_input = a.gated.get();
  } else {
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    cuda::causal_attention_forward(a.attn.get(), a.lse.get(), a.q.get(), a.k.get(), a.v.get(), B * H, S, d, scale,
                                   stream_);
    cuda::merge_heads(a.merged.get(), a.attn.get(), B, S, H, d, stream_);
  }
  cuda::linear_forward<T>(*blas_, attn_out, dense_input, p(pre + "attention.dense.weight"),
                          bias ? p(pre + "attention.dense.bias") : nullptr, N, D, D, stream_);
}

// φ(q), φ(k) = softmax(q·P), softmax(k·P) [⊙ w]; o = decayed linear attention; then
// gated = silu(a · W_G) ⊙ GroupNorm(o) feeds the dense projection (dijiang.md, section 2).
template <typename T>
void GPTNeoXCuda<T>::dijiang_core_forward(int64_t l, const T* ln_out) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t B = batch_, S = seq_, N = B * S, D = config_.hidden_size, H = config_.num_heads;
  const int64_t d = config_.head_dim();
  const DiJiangOptions& o = config_.dijiang;
  const float* P = pf(pre + "attention.proj_matrix");
  cuda::feature_map_forward(a.sq.get(), a.q.get(), P, N * H, d, stream_);
  cuda::feature_map_forward(a.sk.get(), a.k.get(), P, N * H, d, stream_);
  const T* fq = a.sq.get();
  const T* fk = a.sk.get();
  if (o.feature_weights) {
    const float* w = pf(pre + "attention.feature_weights");
    cuda::feature_weights_forward(a.fq.get(), a.sq.get(), w, B * H, H, S, d, stream_);
    cuda::feature_weights_forward(a.fk.get(), a.sk.get(), w, B * H, H, S, d, stream_);
    fq = a.fq.get();
    fk = a.fk.get();
  }
  cuda::decay_attention_forward(a.attn.get(), fq, fk, a.v.get(), pf(pre + "attention.log_gamma"), B * H, H, S, d, d,
                                o.chunk, stream_);
  cuda::merge_heads(a.merged.get(), a.attn.get(), B, S, H, d, stream_);
  cuda::gemm<T, T>(*blas_, false, false, N, D, D, 1.0f, ln_out, p(pre + "attention.W_G"), 0.0f, a.gate_pre.get(),
                   stream_);
  cuda::group_norm_gate_forward<T>(a.gated.get(), nullptr, a.gn_mean.get(), a.gn_rstd.get(), a.merged.get(),
                                   pf(pre + "attention.group_norm.weight"), pf(pre + "attention.group_norm.bias"),
                                   a.gate_pre.get(), N, D, config_.group_norm_groups(), kGroupNormEps, stream_);
}

template <typename T>
void GPTNeoXCuda<T>::mlp_forward(int64_t l, const T* ln_out, T* mlp_out) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t N = batch_ * seq_, D = config_.hidden_size, F = config_.intermediate_size;
  cuda::linear_forward<T>(*blas_, a.pre_gelu.get(), ln_out, p(pre + "mlp.dense_h_to_4h.weight"),
                          p(pre + "mlp.dense_h_to_4h.bias"), N, D, F, stream_);
  cuda::gelu_forward(a.post_gelu.get(), a.pre_gelu.get(), N * F, gelu_kind(config_), stream_);
  cuda::linear_forward<T>(*blas_, mlp_out, a.post_gelu.get(), p(pre + "mlp.dense_4h_to_h.weight"),
                          p(pre + "mlp.dense_4h_to_h.bias"), N, F, D, stream_);
}

template <typename T>
void GPTNeoXCuda<T>::backward() {
  if (logits_state_ == LogitsState::Consumed) fail("backward needs a fresh forward pass first");
  const int64_t N = batch_ * seq_, D = config_.hidden_size, V = config_.vocab_size;
  if (logits_state_ == LogitsState::Logits) {
    const float grad_scale =
        predictions_ > 0 ? static_cast<float>(gradient_weight_ / static_cast<double>(predictions_)) : 0.0f;
    cuda::softmax_cross_entropy<T>(logits_.get(), targets_.get(), N, V, true, grad_scale, stream_);
  }
  logits_state_ = LogitsState::Consumed;
  if (predictions_ == 0) return;  // sequences of one token predict nothing

  T* dfinal_ln = nd_a_.get();
  cuda::linear_backward<T>(*blas_, dfinal_ln, output_embedding_gradient(), nullptr, logits_.get(), final_ln_.get(),
                           output_embedding(), N, D, V, false, stream_);
  DJ_CUDA_CHECK(cudaMemsetAsync(dres_a_.get(), 0, dres_a_.size() * sizeof(T), stream_));
  cuda::layernorm_backward(dres_a_.get(), g("gpt_neox.final_layer_norm.weight"), g("gpt_neox.final_layer_norm.bias"),
                           dfinal_ln, final_input_.get(), p("gpt_neox.final_layer_norm.weight"), final_mean_.get(),
                           final_rstd_.get(), N, D, stream_);
  T* dout = dres_a_.get();
  T* dx = dres_b_.get();
  for (int64_t l = config_.num_layers - 1; l >= 0; --l) {
    layer_backward(l, dout, dx);
    std::swap(dout, dx);
  }
  cuda::embedding_backward(g("gpt_neox.embed_in.weight"), dout, ids_.get(), N, V, D, stream_);
}

template <typename T>
void GPTNeoXCuda<T>::layer_backward(int64_t l, const T* dout, T* dx) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t N = batch_ * seq_, D = config_.hidden_size;
  T* dln = nd_b_.get();
  const auto ln_backward = [&](T* dinput, const std::string& name, const T* input, const float* mean,
                               const float* rstd) {
    cuda::layernorm_backward(dinput, g(pre + name + ".weight"), g(pre + name + ".bias"), dln, input,
                             p(pre + name + ".weight"), mean, rstd, N, D, stream_);
  };
  // Parallel: out = x + attn(LN1 x) + mlp(LN2 x). Sequential: mid = x + attn(LN1 x),
  // out = mid + mlp(LN2 mid). In both, the residual carries dout straight through.
  copy_device(dx, dout, N * D, stream_);
  mlp_backward(l, dout, dln);
  if (config_.use_parallel_residual) {
    ln_backward(dx, "post_attention_layernorm", a.input.get(), a.ln2_mean.get(), a.ln2_rstd.get());
    attention_backward(l, dout, dln);
  } else {
    ln_backward(dx, "post_attention_layernorm", a.mid.get(), a.ln2_mean.get(), a.ln2_rstd.get());
    attention_backward(l, dx, dln);  // dx now holds d mid
  }
  ln_backward(dx, "input_layernorm", a.input.get(), a.ln1_mean.get(), a.ln1_rstd.get());
}

template <typename T>
void GPTNeoXCuda<T>::attention_backward(int64_t l, const T* dattn_out, T* dln) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t B = batch_, S = seq_, N = B * S, D = config_.hidden_size;
  const int64_t H = config_.num_heads, d = config_.head_dim();
  const bool bias = config_.attention_bias;
  // d(input of the dense projection) lands in nd_c.
  const T* dense_input = config_.is_dijiang() ? a.gated.get() : a.merged.get();
  cuda::linear_backward<T>(*blas_, nd_c_.get(), g(pre + "attention.dense.weight"),
                           bias ? g(pre + "attention.dense.bias") : nullptr, dattn_out, dense_input,
                           p(pre + "attention.dense.weight"), N, D, D, false, stream_);
  if (config_.is_dijiang()) {
    dijiang_core_backward(l, dln);
  } else {
    cuda::split_heads(dattn_.get(), nd_c_.get(), B, S, H, d, stream_);
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    cuda::causal_attention_backward(dq_.get(), dk_.get(), dv_.get(), dattn_.get(), a.q.get(), a.k.get(), a.v.get(),
                                    a.attn.get(), a.lse.get(), B * H, S, d, scale, stream_);
  }
  cuda::rotary_backward(dq_.get(), *rotary_, B * H, S, d, stream_);
  cuda::rotary_backward(dk_.get(), *rotary_, B * H, S, d, stream_);
  cuda::join_qkv(qkv_.get(), dq_.get(), dk_.get(), dv_.get(), B, S, H, d, stream_);
  // DiJiang's gate already wrote its share of d(ln_out) into dln; the projection adds to it.
  cuda::linear_backward<T>(*blas_, dln, g(pre + "attention.query_key_value.weight"),
                           bias ? g(pre + "attention.query_key_value.bias") : nullptr, qkv_.get(), a.ln1.get(),
                           p(pre + "attention.query_key_value.weight"), N, D, 3 * D, config_.is_dijiang(), stream_);
}

// Reverses dijiang_core_forward: from d(gated) in nd_c to dq, dk, dv (rotated q and k) and the
// gate's contribution to d(ln_out), written to dln.
template <typename T>
void GPTNeoXCuda<T>::dijiang_core_backward(int64_t l, T* dln) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t B = batch_, S = seq_, N = B * S, D = config_.hidden_size, H = config_.num_heads;
  const int64_t d = config_.head_dim();
  const DiJiangOptions& o = config_.dijiang;
  T* dgate = nd_a_.get();
  T* dmerged = nd_d_.get();
  cuda::group_norm_gate_backward<T>(dmerged, dgate, g(pre + "attention.group_norm.weight"),
                                    g(pre + "attention.group_norm.bias"), nd_c_.get(), a.merged.get(),
                                    a.gate_pre.get(), pf(pre + "attention.group_norm.weight"),
                                    pf(pre + "attention.group_norm.bias"), a.gn_mean.get(), a.gn_rstd.get(), N, D,
                                    config_.group_norm_groups(), stream_);
  cuda::split_heads(dattn_.get(), dmerged, B, S, H, d, stream_);
  const T* fq = o.feature_weights ? a.fq.get() : a.sq.get();
  const T* fk = o.feature_weights ? a.fk.get() : a.sk.get();
  cuda::decay_attention_backward(dq_.get(), dk_.get(), dv_.get(),
                                 o.learnable_decay ? g(pre + "attention.log_gamma") : nullptr, dattn_.get(), fq, fk,
                                 a.v.get(), pf(pre + "attention.log_gamma"), B * H, H, S, d, d, o.chunk, stream_);
  // d(features) -> d(softmax outputs) -> d(rotated q, k), through dfeature.
  const float* P = pf(pre + "attention.proj_matrix");
  for (auto [dx, softmax_out] : {std::pair{dq_.get(), a.sq.get()}, std::pair{dk_.get(), a.sk.get()}}) {
    if (o.feature_weights)
      cuda::feature_weights_backward(dfeature_.get(), g(pre + "attention.feature_weights"), dx, softmax_out,
                                     pf(pre + "attention.feature_weights"), B * H, H, S, d, stream_);
    else
      copy_device(dfeature_.get(), dx, N * D, stream_);
    cuda::feature_map_backward(dx, dfeature_.get(), softmax_out, P, N * H, d, stream_);
  }
  // gate_pre = ln_out · W_G: dW_G += ln_outᵀ · dgate, d(ln_out) = dgate · W_Gᵀ.
  cuda::gemm<T, float>(*blas_, true, false, D, D, N, 1.0f, a.ln1.get(), dgate, 1.0f, g(pre + "attention.W_G"),
                       stream_);
  cuda::gemm<T, T>(*blas_, false, true, N, D, D, 1.0f, dgate, p(pre + "attention.W_G"), 0.0f, dln, stream_);
}

template <typename T>
void GPTNeoXCuda<T>::mlp_backward(int64_t l, const T* dmlp_out, T* dln) {
  Layer& a = layers_[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t N = batch_ * seq_, D = config_.hidden_size, F = config_.intermediate_size;
  T* dhidden = nf_.get();
  cuda::linear_backward<T>(*blas_, dhidden, g(pre + "mlp.dense_4h_to_h.weight"), g(pre + "mlp.dense_4h_to_h.bias"),
                           dmlp_out, a.post_gelu.get(), p(pre + "mlp.dense_4h_to_h.weight"), N, F, D, false, stream_);
  cuda::gelu_backward(dhidden, dhidden, a.pre_gelu.get(), N * F, gelu_kind(config_), stream_);
  cuda::linear_backward<T>(*blas_, dln, g(pre + "mlp.dense_h_to_4h.weight"), g(pre + "mlp.dense_h_to_4h.bias"),
                           dhidden, a.ln2.get(), p(pre + "mlp.dense_h_to_4h.weight"), N, D, F, false, stream_);
}

template class GPTNeoXCuda<float>;
template class GPTNeoXCuda<__nv_bfloat16>;

}  // namespace dj
#endif
