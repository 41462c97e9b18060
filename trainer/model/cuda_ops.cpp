#include "trainer/model/cuda_ops.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cuda/decode.h"
#include "kernels/cuda/dijiang_attention.h"
#include "kernels/cuda/linear_attention.h"
#include "kernels/cuda/layout.h"
#include "kernels/cuda/ops.h"

namespace dj {

namespace {

cuda::GeluKind cuda_gelu(cpu::GeluKind kind) {
  return kind == cpu::GeluKind::Tanh ? cuda::GeluKind::Tanh : cuda::GeluKind::Erf;
}

}  // namespace

template <typename T>
struct CudaOps<T>::Resources {
  double timeout_s = 0.0;
  std::unique_ptr<cuda::Blas> blas;  // made on the first product
  // Rotary tables by (rotary dims, base), grown to the longest sequence seen: at least doubled each
  // time, so decoding one position after another rebuilds a table O(log n) times.
  std::map<std::pair<int64_t, double>, std::unique_ptr<cuda::RotaryTable>> rotary;
  cuda::DeviceArray<double> row_loss, sum;  // cross-entropy rows, Σ g²
  cuda::DeviceArray<cuda::CrossEntropyTotals> totals;

  cuda::Blas& products() {
    if (!blas) blas = std::make_unique<cuda::Blas>();
    return *blas;
  }
  const cuda::RotaryTable& table(int64_t length, int64_t rotary_dims, double base) {
    std::unique_ptr<cuda::RotaryTable>& t = rotary[{rotary_dims, base}];
    if (!t || t->max_len() < length)
      t = std::make_unique<cuda::RotaryTable>(t ? std::max(length, 2 * t->max_len()) : length, rotary_dims, base);
    return *t;
  }
};

template <typename T>
CudaOps<T>::CudaOps(cudaStream_t stream, double timeout_s) : stream_(stream), resources_(std::make_shared<Resources>()) {
  resources_->timeout_s = timeout_s;
}

template <typename T>
void CudaOps<T>::set_timeout(double seconds) {
  resources_->timeout_s = seconds;
}

template <typename T>
void CudaOps<T>::wait(const char* what) const {
  const double limit = resources_->timeout_s;
  if (limit <= 0) {
    DJ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    return;
  }
  // Poll, so that a stream stuck behind a collective whose peer stopped ends with a message.
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (int polls = 0;; ++polls) {
    const cudaError_t status = cudaStreamQuery(stream_);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) DJ_CUDA_CHECK(status);
    if (std::chrono::duration<double>(Clock::now() - start).count() > limit)
      fail("the GPU did not finish {} within {:g} s: a collective it waits for has probably lost a peer rank", what,
           limit);
    if (polls > 100) std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

template <typename T>
void CudaOps<T>::synchronize() const {
  wait("its queued work");
}

template <typename T>
void CudaOps<T>::upload_bytes(void* dst, const void* host, int64_t bytes) {
  if (bytes > 0)
    DJ_CUDA_CHECK(cudaMemcpyAsync(dst, host, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_));
}

template <typename T>
void CudaOps<T>::download_bytes(void* host, const void* src, int64_t bytes) const {
  if (bytes <= 0) return;
  DJ_CUDA_CHECK(cudaMemcpyAsync(host, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, stream_));
  wait("a copy to the host");
}

template <typename T>
void CudaOps<T>::copy_bytes(void* dst, const void* src, int64_t bytes) {
  if (bytes > 0 && dst != src)
    DJ_CUDA_CHECK(cudaMemcpyAsync(dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToDevice, stream_));
}

template <typename T>
void CudaOps<T>::zero_bytes(void* dst, int64_t bytes) {
  if (bytes > 0) DJ_CUDA_CHECK(cudaMemsetAsync(dst, 0, static_cast<size_t>(bytes), stream_));
}

template <typename T>
void CudaOps<T>::accumulate(float* out, const float* in, int64_t n) {
  if (n > 0) cuda::add(out, out, in, n, stream_);
}

template <typename T>
void CudaOps<T>::to_compute(T* dst, const float* src, int64_t n) {
  if (n <= 0) return;
  if constexpr (std::is_same_v<T, float>)
    copy(dst, src, n);
  else
    cuda::convert(dst, src, n, stream_);
}

template <typename T>
void CudaOps<T>::embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t D) {
  cuda::embedding_forward(out, ids, table, n, vocab, D, stream_);
}

template <typename T>
void CudaOps<T>::embedding_backward(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab,
                                    int64_t D) {
  cuda::embedding_backward(dtable, dout, ids, n, vocab, D, stream_);
}

template <typename T>
void CudaOps<T>::layernorm_forward(T* y, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t rows,
                                   int64_t D, double eps) {
  cuda::layernorm_forward(y, mean, rstd, x, w, b, rows, D, eps, stream_);
}

template <typename T>
void CudaOps<T>::layernorm_backward(T* dx, float* dw, float* db, const T* dy, const T* x, const T* w,
                                    const float* mean, const float* rstd, int64_t rows, int64_t D) {
  cuda::layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, rows, D, stream_);
}

template <typename T>
void CudaOps<T>::linear_forward(T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in, int64_t out) {
  cuda::linear_forward<T>(resources_->products(), y, x, W, b, rows, in, out, stream_);
}

template <typename T>
void CudaOps<T>::linear_backward(T* dx, float* dW, float* db, const T* dy, const T* x, const T* W, int64_t rows,
                                 int64_t in, int64_t out, bool accumulate_dx) {
  cuda::linear_backward<T>(resources_->products(), dx, dW, db, dy, x, W, rows, in, out, accumulate_dx, stream_);
}

template <typename T>
void CudaOps<T>::matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, const T* B, T* C) {
  cuda::gemm<T, T>(resources_->products(), trans_a, trans_b, M, N, K, 1.0f, A, B, 0.0f, C, stream_);
}

template <typename T>
void CudaOps<T>::matmul_accumulate(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A,
                                   const T* B, float* C) {
  cuda::gemm<T, float>(resources_->products(), trans_a, trans_b, M, N, K, 1.0f, A, B, 1.0f, C, stream_);
}

template <typename T>
void CudaOps<T>::gelu_forward(T* y, const T* x, int64_t n, cpu::GeluKind kind) {
  cuda::gelu_forward(y, x, n, cuda_gelu(kind), stream_);
}

template <typename T>
void CudaOps<T>::gelu_backward(T* dx, const T* dy, const T* x, int64_t n, cpu::GeluKind kind) {
  cuda::gelu_backward(dx, dy, x, n, cuda_gelu(kind), stream_);
}

template <typename T>
void CudaOps<T>::rotary_forward(T* x, int64_t BH, int64_t S, int64_t d, int64_t rotary_dims, double base,
                                int64_t position_offset) {
  cuda::rotary_forward(x, resources_->table(position_offset + S, rotary_dims, base), BH, S, d, stream_,
                       position_offset);
}

template <typename T>
void CudaOps<T>::rotary_backward(T* dx, int64_t BH, int64_t S, int64_t d, int64_t rotary_dims, double base) {
  cuda::rotary_backward(dx, resources_->table(S, rotary_dims, base), BH, S, d, stream_);
}

template <typename T>
void CudaOps<T>::split_qkv(T* q, T* k, T* v, const T* qkv, int64_t B, int64_t S, int64_t H, int64_t d) {
  cuda::split_qkv(q, k, v, qkv, B, S, H, d, stream_);
}

template <typename T>
void CudaOps<T>::join_qkv(T* qkv, const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H, int64_t d) {
  cuda::join_qkv(qkv, q, k, v, B, S, H, d, stream_);
}

template <typename T>
void CudaOps<T>::merge_heads(T* merged, const T* heads, int64_t B, int64_t S, int64_t H, int64_t d) {
  cuda::merge_heads(merged, heads, B, S, H, d, stream_);
}

template <typename T>
void CudaOps<T>::split_heads(T* heads, const T* merged, int64_t B, int64_t S, int64_t H, int64_t d) {
  cuda::split_heads(heads, merged, B, S, H, d, stream_);
}

template <typename T>
void CudaOps<T>::add(T* out, const T* a, const T* b, int64_t n) {
  cuda::add(out, a, b, n, stream_);
}

template <typename T>
void CudaOps<T>::add3(T* out, const T* x, const T* b, const T* c, int64_t n) {
  cuda::add3(out, x, b, c, n, stream_);
}

template <typename T>
void CudaOps<T>::causal_attention_forward(T* o, float* lse, const T* q, const T* k, const T* v, int64_t BH, int64_t S,
                                          int64_t d, double scale) {
  cuda::causal_attention_forward(o, lse, q, k, v, BH, S, d, static_cast<float>(scale), stream_);
}

template <typename T>
void CudaOps<T>::causal_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                                           const T* o, const float* lse, int64_t BH, int64_t S, int64_t d,
                                           double scale) {
  cuda::causal_attention_backward(dq, dk, dv, dout, q, k, v, o, lse, BH, S, d, static_cast<float>(scale), stream_);
}

template <typename T>
void CudaOps<T>::check_config(const ModelConfig& config) {
  const int64_t d = config.head_dim();
  if (config.is_linear() && (config.linear_features() > cuda::kMaxHeadDim || d + 1 > cuda::kMaxHeadDim))
    fail("{} attention with head size {} needs {} features and {} value columns; the GPU kernels take at most {}: "
         "run it on the CPU (--device cpu)",
         config.attention_name(), d, config.linear_features(), d + 1, cuda::kMaxHeadDim);
  if (d > cuda::kMaxHeadDim)
    fail("head size {} ({} / {} heads) is above the {} the GPU attention kernels support; run it on the CPU "
         "(--device cpu)",
         d, config.hidden_size, config.num_heads, cuda::kMaxHeadDim);
}

template <typename T>
void CudaOps<T>::linear_feature_forward(T* f, const T* x, const float* P, cpu::LinearFeatureMap map, bool query,
                                        int64_t BH, int64_t n, int64_t d, int64_t position0, int64_t horizon) {
  cuda::linear_feature_forward(f, x, P, map, query, BH, n, d, position0, horizon, stream_);
}

template <typename T>
void CudaOps<T>::linear_feature_backward(T* dx, const T* df, const T* f, const T* x, const float* P,
                                         cpu::LinearFeatureMap map, bool query, int64_t BH, int64_t n, int64_t d,
                                         int64_t position0, int64_t horizon) {
  cuda::linear_feature_backward(dx, df, f, x, P, map, query, BH, n, d, position0, horizon, stream_);
}

template <typename T>
void CudaOps<T>::append_ones(T* vx, const T* v, int64_t rows, int64_t dv) {
  cuda::append_ones(vx, v, rows, dv, stream_);
}

template <typename T>
void CudaOps<T>::drop_last_column(T* v, const T* vx, int64_t rows, int64_t dv) {
  cuda::drop_last_column(v, vx, rows, dv, stream_);
}

template <typename T>
void CudaOps<T>::normalize_rows_forward(T* o, const T* ox, int64_t rows, int64_t dv) {
  cuda::normalize_rows_forward(o, ox, rows, dv, stream_);
}

template <typename T>
void CudaOps<T>::normalize_rows_backward(T* dox, const T* dout, const T* o, const T* ox, int64_t rows, int64_t dv) {
  cuda::normalize_rows_backward(dox, dout, o, ox, rows, dv, stream_);
}

template <typename T>
void CudaOps<T>::feature_map_forward(T* s, const T* x, const float* P, int64_t rows, int64_t d) {
  cuda::feature_map_forward(s, x, P, rows, d, stream_);
}

template <typename T>
void CudaOps<T>::feature_map_backward(T* dx, const T* ds, const T* s, const float* P, int64_t rows, int64_t d) {
  cuda::feature_map_backward(dx, ds, s, P, rows, d, stream_);
}

template <typename T>
void CudaOps<T>::feature_weights_forward(T* phi, const T* s, const float* w, int64_t BH, int64_t H, int64_t n,
                                         int64_t d) {
  cuda::feature_weights_forward(phi, s, w, BH, H, n, d, stream_);
}

template <typename T>
void CudaOps<T>::feature_weights_backward(T* ds, float* dw, const T* dphi, const T* s, const float* w, int64_t BH,
                                          int64_t H, int64_t n, int64_t d) {
  cuda::feature_weights_backward(ds, dw, dphi, s, w, BH, H, n, d, stream_);
}

template <typename T>
void CudaOps<T>::decay_attention_forward(T* o, const T* fq, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                                         int64_t H, int64_t n, int64_t m, int64_t dv, cpu::DecayForm form,
                                         int64_t chunk) {
  if (!supports(form)) fail("the GPU computes the chunkwise form of DiJiang attention only");
  cuda::decay_attention_forward(o, fq, fk, v, log_gamma, BH, H, n, m, dv, chunk, stream_);
}

template <typename T>
void CudaOps<T>::copy_rows(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows,
                           int64_t width) {
  cuda::copy_rows(dst, dst_stride, src, src_stride, rows, width, stream_);
}

template <typename T>
void CudaOps<T>::cached_attention_step(T* o, const T* q, const T* k_cache, const T* v_cache, int64_t BH, int64_t len,
                                       int64_t capacity, int64_t d, double scale) {
  cuda::cached_attention_step(o, q, k_cache, v_cache, BH, len, capacity, d, scale, stream_);
}

template <typename T>
void CudaOps<T>::decay_attention_prefill_state(float* state, const T* fk, const T* v, const float* log_gamma,
                                               int64_t BH, int64_t H, int64_t n, int64_t m, int64_t dv,
                                               int64_t chunk) {
  cuda::decay_attention_prefill_state(state, fk, v, log_gamma, BH, H, n, m, dv, chunk, stream_);
}

template <typename T>
void CudaOps<T>::decay_attention_step(T* o, float* state, const T* fq, const T* fk, const T* v,
                                      const float* log_gamma, int64_t BH, int64_t H, int64_t m, int64_t dv) {
  cuda::decay_attention_step(o, state, fq, fk, v, log_gamma, BH, H, m, dv, stream_);
}

template <typename T>
void CudaOps<T>::download_double(double* host, const T* src, int64_t n) const {
  std::vector<T> values(static_cast<size_t>(n));
  download(values.data(), src, n);
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, float>)
      host[i] = values[static_cast<size_t>(i)];
    else
      host[i] = static_cast<double>(__bfloat162float(values[static_cast<size_t>(i)]));
  }
}

template <typename T>
void CudaOps<T>::decay_attention_backward(T* dfq, T* dfk, T* dv, float* dlog_gamma, const T* dout, const T* fq,
                                          const T* fk, const T* v, const float* log_gamma, int64_t BH, int64_t H,
                                          int64_t n, int64_t m, int64_t dv_size, cpu::DecayForm form, int64_t chunk) {
  if (!supports(form)) fail("the GPU computes the chunkwise form of DiJiang attention only");
  cuda::decay_attention_backward(dfq, dfk, dv, dlog_gamma, dout, fq, fk, v, log_gamma, BH, H, n, m, dv_size, chunk,
                                 stream_);
}

template <typename T>
void CudaOps<T>::group_norm_gate_forward(T* y, float* mean, float* rstd, const T* x, const float* w, const float* b,
                                         const T* gate, int64_t rows, int64_t channels, int64_t groups, double eps) {
  cuda::group_norm_gate_forward<T>(y, nullptr, mean, rstd, x, w, b, gate, rows, channels, groups,
                                   static_cast<float>(eps), stream_);
}

template <typename T>
void CudaOps<T>::group_norm_gate_backward(T* dx, T* dgate, float* dw, float* db, const T* dy, const T* x,
                                          const T* gate, const float* w, const float* b, const float* mean,
                                          const float* rstd, int64_t rows, int64_t channels, int64_t groups) {
  cuda::group_norm_gate_backward<T>(dx, dgate, dw, db, dy, x, gate, w, b, mean, rstd, rows, channels, groups,
                                    stream_);
}

template <typename T>
LossSum CudaOps<T>::cross_entropy(T* logits, const int32_t* targets, int64_t rows, int64_t vocab, bool write_gradient,
                                  double grad_scale) {
  Resources& r = *resources_;
  if (static_cast<int64_t>(r.row_loss.size()) < rows) r.row_loss = cuda::DeviceArray<double>(static_cast<size_t>(rows));
  if (r.totals.size() == 0) r.totals = cuda::DeviceArray<cuda::CrossEntropyTotals>(1);
  cuda::softmax_cross_entropy_async<T>(logits, targets, rows, vocab, write_gradient, static_cast<float>(grad_scale),
                                       r.row_loss.get(), r.totals.get(), stream_);
  cuda::CrossEntropyTotals totals{};
  download(&totals, r.totals.get(), 1);
  if (totals.invalid > 0) fail("{} target id(s) are not below the vocabulary size {}", totals.invalid, vocab);
  return {totals.loss_sum, static_cast<int64_t>(totals.count)};
}

template <typename T>
void CudaOps<T>::adamw_step(float* params, float* m, float* v, const float* grads, const uint8_t* decay,
                            const uint8_t* update, int64_t n, int64_t step, double lr, const AdamWConfig& config) {
  cuda::adamw_step(params, m, v, grads, decay, update, n, step, lr,
                   cuda::AdamWParams{config.beta1, config.beta2, config.eps, config.weight_decay}, stream_);
}

template <typename T>
LossSum CudaOps<T>::distill_cross_entropy(T* logits, const T* teacher, const int32_t* targets, int64_t rows,
                                          int64_t vocab, bool write_gradient, double grad_scale, double weight,
                                          double temperature) {
  if (!(temperature > 0)) fail("distillation: the temperature must be positive, got {}", temperature);
  Resources& r = *resources_;
  if (static_cast<int64_t>(r.row_loss.size()) < rows) r.row_loss = cuda::DeviceArray<double>(static_cast<size_t>(rows));
  if (r.totals.size() == 0) r.totals = cuda::DeviceArray<cuda::CrossEntropyTotals>(1);
  cuda::distill_cross_entropy_async<T>(logits, teacher, targets, rows, vocab, write_gradient,
                                       static_cast<float>(grad_scale), static_cast<float>(weight),
                                       static_cast<float>(temperature), r.row_loss.get(), r.totals.get(), stream_);
  cuda::CrossEntropyTotals totals{};
  download(&totals, r.totals.get(), 1);
  if (totals.invalid > 0) fail("{} target id(s) are not below the vocabulary size {}", totals.invalid, vocab);
  return {totals.loss_sum, static_cast<int64_t>(totals.count)};
}

template <typename T>
double CudaOps<T>::squared_error(T* grad, const T* a, const T* b, int64_t n, double grad_scale) {
  Resources& r = *resources_;
  if (r.sum.size() == 0) r.sum = cuda::DeviceArray<double>(1);
  cuda::squared_error_async<T>(grad, a, b, n, static_cast<float>(grad_scale), r.sum.get(), stream_);
  double sum = 0.0;
  download(&sum, r.sum.get(), 1);
  return sum;
}

template <typename T>
double CudaOps<T>::sum_of_squares(const float* grads, int64_t n) {
  Resources& r = *resources_;
  if (r.sum.size() == 0) r.sum = cuda::DeviceArray<double>(1);
  cuda::sum_of_squares_async(grads, n, r.sum.get(), stream_);
  double sum = 0.0;
  download(&sum, r.sum.get(), 1);
  return sum;
}

template <typename T>
void CudaOps<T>::clip_by_global_norm(float* grads, int64_t n, double norm, double max_norm) {
  cuda::clip_by_global_norm(grads, n, norm, max_norm, stream_);
}

template <typename T>
std::string CudaOps<T>::memory_report() const {
  size_t free = 0, total = 0;
  DJ_CUDA_CHECK(cudaMemGetInfo(&free, &total));
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  return fmt::format("{:.2f} GiB of {:.2f} GiB in use", static_cast<double>(total - free) / kGiB,
                     static_cast<double>(total) / kGiB);
}

template class CudaOps<float>;
template class CudaOps<__nv_bfloat16>;

}  // namespace dj
