// GPTNeoXModel<Ops> (gpt_neox.h): the backward pass, layer by layer in reverse. Part of gpt_neox_impl.h, which includes it.
#pragma once
#include "trainer/model/gpt_neox_impl.h"

namespace dj {

template <class Ops>
void GPTNeoXModel<Ops>::backward() {
  Activations& a = acts_;
  if (a.logits_state == LogitsState::Consumed) fail("backward needs a fresh forward pass first");
  const int64_t N = a.batch * a.seq, D = config_.hidden_size, V = config_.vocab_size, L = config_.num_layers;
  if (a.logits_state == LogitsState::Logits) {
    const double grad_scale = a.predictions > 0 ? a.gradient_weight / static_cast<double>(a.predictions) : 0.0;
    ops_.cross_entropy(a.logits.data(), a.targets.data(), N, V, true, grad_scale);
  }
  a.logits_state = LogitsState::Consumed;
  // Sequences of one token predict nothing. A storage other than the model's own still sees every
  // segment (its collectives need every rank), with zero gradients.
  if (a.predictions == 0 && storage_ == own_.get()) return;

  const bool tied = config_.tie_word_embeddings;
  hold_parameters(head_segment(), L > 0 ? L : -1);
  hold_gradients(head_segment());
  if (tied) {
    hold_parameters(0);
    hold_gradients(0);
  }
  Act* dfinal_ln = a.nd_a.data();
  ops_.linear_backward(dfinal_ln, output_embedding_gradient(), nullptr, a.logits.data(), a.final_ln.data(),
                       output_embedding(), N, D, V, false);
  ops_.fill_zero(a.dres_a.data(), N * D);
  ops_.layernorm_backward(a.dres_a.data(), g("gpt_neox.final_layer_norm.weight"), g("gpt_neox.final_layer_norm.bias"),
                          dfinal_ln, a.final_input.data(), p("gpt_neox.final_layer_norm.weight"), a.final_mean.data(),
                          a.final_rstd.data(), N, D);
  drop_gradients(head_segment());
  drop_parameters(head_segment());
  Act* dout = a.dres_a.data();
  Act* dx = a.dres_b.data();
  for (int64_t l = L - 1; l >= 0; --l) {
    hold_parameters(l + 1, l >= 1 ? l : -1);
    hold_gradients(l + 1);
    layer_backward(l, dout, dx);
    drop_gradients(l + 1);
    drop_parameters(l + 1);
    std::swap(dout, dx);
  }
  if (!tied) hold_gradients(0);
  ops_.embedding_backward(g("gpt_neox.embed_in.weight"), dout, a.ids.data(), N, V, D);
  drop_gradients(0);
  if (tied) drop_parameters(0);
}

template <class Ops>
void GPTNeoXModel<Ops>::layer_backward(int64_t l, const Act* dout, Act* dx) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t N = acts_.batch * acts_.seq, D = config_.hidden_size;
  Act* dln = acts_.nd_b.data();
  const auto ln_backward = [&](Act* dinput, const std::string& name, const Act* input, const Stat* mean,
                               const Stat* rstd) {
    ops_.layernorm_backward(dinput, g(pre + name + ".weight"), g(pre + name + ".bias"), dln, input,
                            p(pre + name + ".weight"), mean, rstd, N, D);
  };
  // Parallel: out = x + attn(LN1 x) + mlp(LN2 x). Sequential: mid = x + attn(LN1 x),
  // out = mid + mlp(LN2 mid). In both, the residual carries dout straight through.
  ops_.copy(dx, dout, N * D);
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

template <class Ops>
void GPTNeoXModel<Ops>::attention_backward(int64_t l, const Act* dattn_out, Act* dln) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  Activations& s = acts_;
  const std::string pre = layer_prefix(l);
  const int64_t B = s.batch, S = s.seq, N = B * S, D = config_.hidden_size;
  const int64_t H = config_.num_heads, d = config_.head_dim(), r = config_.rotary_dims();
  const bool bias = config_.attention_bias;
  // d(input of the dense projection) lands in nd_c.
  const Act* dense_input = config_.is_dijiang() ? a.gated.data() : a.merged.data();  // merged: softmax, baselines
  ops_.linear_backward(s.nd_c.data(), g(pre + "attention.dense.weight"),
                       bias ? g(pre + "attention.dense.bias") : nullptr, dattn_out, dense_input,
                       p(pre + "attention.dense.weight"), N, D, D, false);
  if (config_.is_dijiang()) {
    dijiang_core_backward(l, dln);
  } else if (config_.is_linear()) {
    linear_core_backward(l);
  } else {
    ops_.split_heads(s.dattn.data(), s.nd_c.data(), B, S, H, d);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    ops_.causal_attention_backward(s.dq.data(), s.dk.data(), s.dv.data(), s.dattn.data(), a.q.data(), a.k.data(),
                                   a.v.data(), a.attn.data(), a.lse.data(), B * H, S, d, scale);
  }
  ops_.rotary_backward(s.dq.data(), B * H, S, d, r, config_.rotary_emb_base);
  ops_.rotary_backward(s.dk.data(), B * H, S, d, r, config_.rotary_emb_base);
  ops_.join_qkv(s.qkv.data(), s.dq.data(), s.dk.data(), s.dv.data(), B, S, H, d);
  // DiJiang's gate already wrote its share of d(ln_out) into dln; the projection adds to it.
  ops_.linear_backward(dln, g(pre + "attention.query_key_value.weight"),
                       bias ? g(pre + "attention.query_key_value.bias") : nullptr, s.qkv.data(), a.ln1.data(),
                       p(pre + "attention.query_key_value.weight"), N, D, 3 * D, config_.is_dijiang());
}

// Reverses dijiang_core_forward: from d(gated) in nd_c to dq, dk, dv (rotated q and k) and the
// gate's contribution to d(ln_out), written to dln.
template <class Ops>
void GPTNeoXModel<Ops>::dijiang_core_backward(int64_t l, Act* dln) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  Activations& s = acts_;
  const std::string pre = layer_prefix(l);
  const int64_t B = s.batch, S = s.seq, N = B * S, D = config_.hidden_size, H = config_.num_heads;
  const int64_t d = config_.head_dim();
  const DiJiangOptions& o = config_.dijiang;
  Act* dgate = s.nd_a.data();
  Act* dmerged = s.nd_d.data();
  ops_.group_norm_gate_backward(dmerged, dgate, g(pre + "attention.group_norm.weight"),
                                g(pre + "attention.group_norm.bias"), s.nd_c.data(), a.merged.data(), a.gate_pre.data(),
                                pm(pre + "attention.group_norm.weight"), pm(pre + "attention.group_norm.bias"),
                                a.gn_mean.data(), a.gn_rstd.data(), N, D, config_.group_norm_groups());
  ops_.split_heads(s.dattn.data(), dmerged, B, S, H, d);
  const bool feature_map = config_.has_feature_map();
  const Act* sq = feature_map ? a.sq.data() : a.q.data();
  const Act* sk = feature_map ? a.sk.data() : a.k.data();
  const Act* fq = o.feature_weights ? a.fq.data() : sq;
  const Act* fk = o.feature_weights ? a.fk.data() : sk;
  ops_.decay_attention_backward(s.dq.data(), s.dk.data(), s.dv.data(),
                                o.learnable_decay ? g(pre + "attention.log_gamma") : nullptr, s.dattn.data(), fq, fk,
                                a.v.data(), pm(pre + "attention.log_gamma"), B * H, H, S, d, d, form_, o.chunk);
  // d(features) -> d(softmax outputs) -> d(rotated q, k), each through dfeature. Without a feature
  // map the features are q and k (times the weights): d(features) is d(q), d(k) already.
  const Param* P = feature_map ? pm(pre + "attention.proj_matrix") : nullptr;
  for (auto [dx, softmax_out] : {std::pair{s.dq.data(), sq}, std::pair{s.dk.data(), sk}}) {
    if (!feature_map) {
      if (o.feature_weights)  // in place: ds may alias dphi
        ops_.feature_weights_backward(dx, g(pre + "attention.feature_weights"), dx, softmax_out,
                                      pm(pre + "attention.feature_weights"), B * H, H, S, d);
      continue;
    }
    if (o.feature_weights)
      ops_.feature_weights_backward(s.dfeature.data(), g(pre + "attention.feature_weights"), dx, softmax_out,
                                    pm(pre + "attention.feature_weights"), B * H, H, S, d);
    else
      ops_.copy(s.dfeature.data(), dx, N * D);
    ops_.feature_map_backward(dx, s.dfeature.data(), softmax_out, P, N * H, d);
  }
  // gate_pre = ln_out · W_G: dW_G += ln_outᵀ · dgate, d(ln_out) = dgate · W_Gᵀ.
  ops_.matmul_accumulate(true, false, D, D, N, a.ln1.data(), dgate, g(pre + "attention.W_G"));
  ops_.matmul(false, true, N, D, D, dgate, p(pre + "attention.W_G"), dln);
}

// Reverses linear_core_forward: from d(merged) in nd_c to dq, dk, dv (rotated q and k).
template <class Ops>
void GPTNeoXModel<Ops>::linear_core_backward(int64_t l) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  Activations& s = acts_;
  const int64_t B = s.batch, S = s.seq, H = config_.num_heads, d = config_.head_dim(), BH = B * H;
  const int64_t m = config_.linear_features();
  const LinearOptions& o = config_.linear;
  ops_.split_heads(s.dattn.data(), s.nd_c.data(), B, S, H, d);
  ops_.normalize_rows_backward(s.dox.data(), s.dattn.data(), a.attn.data(), a.ox.data(), BH * S, d);
  ops_.decay_attention_backward(s.dfq_x.data(), s.dfk_x.data(), s.dvx.data(), static_cast<Grad*>(nullptr),
                                s.dox.data(), a.sq.data(), a.sk.data(), a.vx.data(), zero_log_gamma_.data(), BH, H, S,
                                m, d + 1, form_, o.chunk);
  ops_.drop_last_column(s.dv.data(), s.dvx.data(), BH * S, d);
  const Param* P = o.feature_map == cpu::LinearFeatureMap::Performer ? pm(layer_prefix(l) + "attention.proj_matrix")
                                                                      : nullptr;
  ops_.linear_feature_backward(s.dq.data(), s.dfq_x.data(), a.sq.data(), a.q.data(), P, o.feature_map, true, BH, S, d,
                               0, config_.max_position_embeddings);
  ops_.linear_feature_backward(s.dk.data(), s.dfk_x.data(), a.sk.data(), a.k.data(), P, o.feature_map, false, BH, S,
                               d, 0, config_.max_position_embeddings);
}

template <class Ops>
void GPTNeoXModel<Ops>::mlp_backward(int64_t l, const Act* dmlp_out, Act* dln) {
  LayerActivations& a = acts_.layers[static_cast<size_t>(l)];
  const std::string pre = layer_prefix(l);
  const int64_t N = acts_.batch * acts_.seq, D = config_.hidden_size, F = config_.intermediate_size;
  Act* dhidden = acts_.nf.data();
  ops_.linear_backward(dhidden, g(pre + "mlp.dense_4h_to_h.weight"), g(pre + "mlp.dense_4h_to_h.bias"), dmlp_out,
                       a.post_gelu.data(), p(pre + "mlp.dense_4h_to_h.weight"), N, F, D, false);
  ops_.gelu_backward(dhidden, dhidden, a.pre_gelu.data(), N * F, config_.gelu_kind());
  ops_.linear_backward(dln, g(pre + "mlp.dense_h_to_4h.weight"), g(pre + "mlp.dense_h_to_4h.bias"), dhidden,
                       a.ln2.data(), p(pre + "mlp.dense_h_to_4h.weight"), N, D, F, false);
}

}  // namespace dj
