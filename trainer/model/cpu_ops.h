// The CPU backend of the model and of the training state: the ops of kernels/cpu on host memory.
//
// A backend ("Ops") is what GPTNeoXModel<Ops> (trainer/model/gpt_neox.h) and ShardedState<Ops>
// (trainer/train/sharded_state.h) are written over; CpuOps<T> and CudaOps<T>
// (trainer/model/cuda_ops.h) are the two. Each provides
//   - the element types: Act (activations, and the parameters the products read), Param (master
//     parameters), Grad (gradients), Stat (saved normalisation statistics);
//   - Array<U>: owning storage of U on the backend (host vectors here, device memory there);
//   - memory helpers (upload, download, copy, fill_zero, accumulate, to_compute) and every op the
//     layer sequence calls, with one signature on both backends, where each pointer lives on the
//     backend;
//   - the optimizer's ops on fp32 buffers (AdamW, Σ g², clipping) for the training state.
// CpuOps is stateless and copyable; every type is T (float for training and evaluation, double
// for reference evaluations and finite-difference tests).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cross_entropy.h"
#include "kernels/cpu/decode.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/embedding.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/layernorm.h"
#include "kernels/cpu/layout.h"
#include "kernels/cpu/linear_attention.h"
#include "kernels/cpu/rotary.h"
#include "trainer/model/config.h"
#include "trainer/optim/adamw.h"

namespace dj {

// The sum of next-token losses of a forward pass and the number of predictions they cover.
struct LossSum {
  double sum = 0.0;
  int64_t count = 0;
};

template <typename T>
class CpuOps {
 public:
  using Act = T;
  using Param = T;
  using Grad = T;
  using Stat = T;
  template <typename U>
  using Array = std::vector<U>;
  static constexpr bool kOnDevice = false;
  static constexpr const char* kName = "CPU";

  // ---- memory ------------------------------------------------------------------------------------
  template <typename U>
  static Array<U> allocate(int64_t count) {
    return Array<U>(static_cast<size_t>(count));
  }
  template <typename U>
  void upload(U* dst, const U* host, int64_t n) {
    if (n > 0) std::memcpy(dst, host, static_cast<size_t>(n) * sizeof(U));
  }
  template <typename U>
  void download(U* host, const U* src, int64_t n) const {
    if (n > 0) std::memcpy(host, src, static_cast<size_t>(n) * sizeof(U));
  }
  template <typename U>
  void copy(U* dst, const U* src, int64_t n) {
    cpu::copy(dst, src, n);
  }
  template <typename U>
  void fill_zero(U* dst, int64_t n) {
    cpu::fill_zero(dst, n);
  }
  void accumulate(Grad* out, const Grad* in, int64_t n) { cpu::accumulate(out, in, n); }
  // The compute copy of parameters (Act from Param): the same values here.
  void to_compute(Act* dst, const Param* src, int64_t n) { copy(dst, src, n); }
  // Waits for queued work (nothing is queued on the CPU).
  void synchronize() const {}

  // ---- model ops -----------------------------------------------------------------------------------
  void embedding_forward(Act* out, const int32_t* ids, const Act* table, int64_t n, int64_t vocab, int64_t D) {
    cpu::embedding_forward(out, ids, table, n, vocab, D);
  }
  void embedding_backward(Grad* dtable, const Act* dout, const int32_t* ids, int64_t n, int64_t /*vocab*/,
                          int64_t D) {
    cpu::embedding_backward(dtable, dout, ids, n, D);
  }
  void layernorm_forward(Act* y, Stat* mean, Stat* rstd, const Act* x, const Act* w, const Act* b, int64_t rows,
                         int64_t D, double eps) {
    cpu::layernorm_forward(y, mean, rstd, x, w, b, rows, D, eps);
  }
  void layernorm_backward(Act* dx, Grad* dw, Grad* db, const Act* dy, const Act* x, const Act* w, const Stat* mean,
                          const Stat* rstd, int64_t rows, int64_t D) {
    cpu::layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, rows, D);
  }
  void linear_forward(Act* y, const Act* x, const Act* W, const Act* b, int64_t rows, int64_t in, int64_t out) {
    cpu::linear_forward(y, x, W, b, rows, in, out);
  }
  void linear_backward(Act* dx, Grad* dW, Grad* db, const Act* dy, const Act* x, const Act* W, int64_t rows,
                       int64_t in, int64_t out, bool accumulate_dx) {
    cpu::linear_backward<T>(dx, dW, db, dy, x, W, rows, in, out, accumulate_dx);
  }
  // C[M,N] = op(A) op(B) (overwritten), row-major as cpu::gemm.
  void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const Act* A, const Act* B, Act* C) {
    cpu::gemm<T>(trans_a, trans_b, M, N, K, T(1), A, B, T(0), C);
  }
  // C[M,N] += op(A) op(B) into a gradient.
  void matmul_accumulate(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const Act* A, const Act* B,
                         Grad* C) {
    cpu::gemm<T>(trans_a, trans_b, M, N, K, T(1), A, B, T(1), C);
  }
  void gelu_forward(Act* y, const Act* x, int64_t n, cpu::GeluKind kind) { cpu::gelu_forward(y, x, n, kind); }
  void gelu_backward(Act* dx, const Act* dy, const Act* x, int64_t n, cpu::GeluKind kind) {
    cpu::gelu_backward(dx, dy, x, n, kind);
  }
  // Token t of each row at position position_offset + t (decoding continues a sequence).
  void rotary_forward(Act* x, int64_t BH, int64_t S, int64_t d, int64_t rotary_dims, double base,
                      int64_t position_offset = 0) {
    cpu::rotary_forward(x, BH, S, d, rotary_dims, base, position_offset);
  }
  void rotary_backward(Act* dx, int64_t BH, int64_t S, int64_t d, int64_t rotary_dims, double base) {
    cpu::rotary_backward(dx, BH, S, d, rotary_dims, base);
  }
  void split_qkv(Act* q, Act* k, Act* v, const Act* qkv, int64_t B, int64_t S, int64_t H, int64_t d) {
    cpu::split_qkv(q, k, v, qkv, B, S, H, d);
  }
  void join_qkv(Act* qkv, const Act* q, const Act* k, const Act* v, int64_t B, int64_t S, int64_t H, int64_t d) {
    cpu::join_qkv(qkv, q, k, v, B, S, H, d);
  }
  void merge_heads(Act* merged, const Act* heads, int64_t B, int64_t S, int64_t H, int64_t d) {
    cpu::merge_heads(merged, heads, B, S, H, d);
  }
  void split_heads(Act* heads, const Act* merged, int64_t B, int64_t S, int64_t H, int64_t d) {
    cpu::split_heads(heads, merged, B, S, H, d);
  }
  void add(Act* out, const Act* a, const Act* b, int64_t n) { cpu::add(out, a, b, n); }
  void add3(Act* out, const Act* x, const Act* b, const Act* c, int64_t n) { cpu::add3(out, x, b, c, n); }

  void causal_attention_forward(Act* o, Stat* lse, const Act* q, const Act* k, const Act* v, int64_t BH, int64_t S,
                                int64_t d, double scale) {
    cpu::causal_attention_forward(o, lse, q, k, v, BH, S, d, static_cast<T>(scale));
  }
  void causal_attention_backward(Act* dq, Act* dk, Act* dv, const Act* dout, const Act* q, const Act* k,
                                 const Act* v, const Act* o, const Stat* lse, int64_t BH, int64_t S, int64_t d,
                                 double scale) {
    cpu::causal_attention_backward(dq, dk, dv, dout, q, k, v, o, lse, BH, S, d, static_cast<T>(scale));
  }

  // Every configuration runs here; every DiJiang form too.
  static void check_config(const ModelConfig&) {}
  static bool supports(cpu::DecayForm) { return true; }
  void feature_map_forward(Act* s, const Act* x, const Param* P, int64_t rows, int64_t d) {
    cpu::feature_map_forward(s, x, P, rows, d);
  }
  void feature_map_backward(Act* dx, const Act* ds, const Act* s, const Param* P, int64_t rows, int64_t d) {
    cpu::feature_map_backward(dx, ds, s, P, rows, d);
  }
  void feature_weights_forward(Act* phi, const Act* s, const Param* w, int64_t BH, int64_t H, int64_t n, int64_t d) {
    cpu::feature_weights_forward(phi, s, w, BH, H, n, d);
  }
  void feature_weights_backward(Act* ds, Grad* dw, const Act* dphi, const Act* s, const Param* w, int64_t BH,
                                int64_t H, int64_t n, int64_t d) {
    cpu::feature_weights_backward(ds, dw, dphi, s, w, BH, H, n, d);
  }
  void decay_attention_forward(Act* o, const Act* fq, const Act* fk, const Act* v, const Param* log_gamma, int64_t BH,
                               int64_t H, int64_t n, int64_t m, int64_t dv, cpu::DecayForm form, int64_t chunk) {
    cpu::decay_attention_forward(o, fq, fk, v, log_gamma, BH, H, n, m, dv, form, chunk);
  }
  void decay_attention_backward(Act* dfq, Act* dfk, Act* dv, Grad* dlog_gamma, const Act* dout, const Act* fq,
                                const Act* fk, const Act* v, const Param* log_gamma, int64_t BH, int64_t H, int64_t n,
                                int64_t m, int64_t dv_size, cpu::DecayForm form, int64_t chunk) {
    cpu::decay_attention_backward(dfq, dfk, dv, dlog_gamma, dout, fq, fk, v, log_gamma, BH, H, n, m, dv_size, form,
                                  chunk);
  }
  // Decoding (kernels/cpu/decode.h, dijiang.h): rows between strided buffers, the teacher's
  // attention of one new token over its key/value cache, and DiJiang's recurrent state [BH, m, dv]
  // (Stat: fp32 on the GPU) after a prefix and after each further token.
  void copy_rows(Act* dst, int64_t dst_stride, const Act* src, int64_t src_stride, int64_t rows, int64_t width) {
    cpu::copy_rows(dst, dst_stride, src, src_stride, rows, width);
  }
  void cached_attention_step(Act* o, const Act* q, const Act* k_cache, const Act* v_cache, int64_t BH, int64_t len,
                             int64_t capacity, int64_t d, double scale) {
    cpu::cached_attention_step(o, q, k_cache, v_cache, BH, len, capacity, d, scale);
  }
  void decay_attention_prefill_state(Stat* state, const Act* fk, const Act* v, const Param* log_gamma, int64_t BH,
                                     int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk) {
    cpu::decay_attention_prefill_state(state, fk, v, log_gamma, BH, H, n, m, dv, chunk);
  }
  void decay_attention_step(Act* o, Stat* state, const Act* fq, const Act* fk, const Act* v, const Param* log_gamma,
                            int64_t BH, int64_t H, int64_t m, int64_t dv) {
    cpu::decay_attention_step(o, state, fq, fk, v, log_gamma, BH, H, m, dv);
  }
  // The linear-attention baselines (kernels/cpu/linear_attention.h): feature maps, the ones column and
  // the normalisation.
  void linear_feature_forward(Act* f, const Act* x, const Param* P, cpu::LinearFeatureMap map, bool query, int64_t BH,
                              int64_t n, int64_t d, int64_t position0, int64_t horizon) {
    cpu::linear_feature_forward(f, x, P, map, query, BH, n, d, position0, horizon);
  }
  void linear_feature_backward(Act* dx, const Act* df, const Act* f, const Act* x, const Param* P,
                               cpu::LinearFeatureMap map, bool query, int64_t BH, int64_t n, int64_t d,
                               int64_t position0, int64_t horizon) {
    cpu::linear_feature_backward(dx, df, f, x, P, map, query, BH, n, d, position0, horizon);
  }
  void append_ones(Act* vx, const Act* v, int64_t rows, int64_t dv) { cpu::append_ones(vx, v, rows, dv); }
  void drop_last_column(Act* v, const Act* vx, int64_t rows, int64_t dv) { cpu::drop_last_column(v, vx, rows, dv); }
  void normalize_rows_forward(Act* o, const Act* ox, int64_t rows, int64_t dv) {
    cpu::normalize_rows_forward(o, ox, rows, dv);
  }
  void normalize_rows_backward(Act* dox, const Act* dout, const Act* o, const Act* ox, int64_t rows, int64_t dv) {
    cpu::normalize_rows_backward(dox, dout, o, ox, rows, dv);
  }
  // Values of the backend's activations on the host, as double (waits on a device).
  void download_double(double* host, const Act* src, int64_t n) const {
    for (int64_t i = 0; i < n; ++i) host[i] = static_cast<double>(src[i]);
  }

  void group_norm_gate_forward(Act* y, Stat* mean, Stat* rstd, const Act* x, const Param* w, const Param* b,
                               const Act* gate, int64_t rows, int64_t channels, int64_t groups, double eps) {
    cpu::group_norm_gate_forward(y, mean, rstd, x, w, b, gate, rows, channels, groups, eps);
  }
  void group_norm_gate_backward(Act* dx, Act* dgate, Grad* dw, Grad* db, const Act* dy, const Act* x,
                                const Act* gate, const Param* w, const Param* b, const Stat* mean, const Stat* rstd,
                                int64_t rows, int64_t channels, int64_t groups) {
    cpu::group_norm_gate_backward(dx, dgate, dw, db, dy, x, gate, w, b, mean, rstd, rows, channels, groups);
  }

  // Fused softmax + cross-entropy over logits [rows, vocab] with targets on the backend (negative:
  // ignored); with write_gradient the rows become grad_scale · (softmax − onehot).
  LossSum cross_entropy(Act* logits, const int32_t* targets, int64_t rows, int64_t vocab, bool write_gradient,
                        double grad_scale) {
    const auto r = cpu::softmax_cross_entropy<T>(logits, targets, rows, vocab, write_gradient, static_cast<T>(grad_scale));
    return {r.loss_sum, r.count};
  }
  // cross_entropy plus weight · τ² · KL(softmax(teacher/τ) ‖ softmax(logits/τ)) per row, and its
  // gradient (cpu::distill_cross_entropy); teacher [rows, vocab] on the backend.
  LossSum distill_cross_entropy(Act* logits, const Act* teacher, const int32_t* targets, int64_t rows, int64_t vocab,
                                bool write_gradient, double grad_scale, double weight, double temperature) {
    const auto r = cpu::distill_cross_entropy<T>(logits, teacher, targets, rows, vocab, write_gradient,
                                                 static_cast<T>(grad_scale), weight, temperature);
    return {r.loss_sum, r.count};
  }
  // Σ (a − b)² over n values (summed in double); with grad non-null, grad = grad_scale · (a − b)
  // (grad may alias a or b): the attention-transfer loss and its gradient.
  double squared_error(Act* grad, const Act* a, const Act* b, int64_t n, double grad_scale) {
    return cpu::squared_error<T>(grad, a, b, n, static_cast<T>(grad_scale));
  }

  // ---- optimizer ops (fp32 buffers) ----------------------------------------------------------------
  void adamw_step(float* params, float* m, float* v, const float* grads, const uint8_t* decay, const uint8_t* update,
                  int64_t n, int64_t step, double lr, const AdamWConfig& config) {
    dj::adamw_step(params, m, v, grads, decay, update, n, step, lr, config);
  }
  double sum_of_squares(const float* grads, int64_t n) { return dj::sum_of_squares(grads, n); }
  void clip_by_global_norm(float* grads, int64_t n, double norm, double max_norm) {
    dj::clip_by_global_norm(grads, n, norm, max_norm);
  }
};

}  // namespace dj
