// The CUDA backend of the model and of the training state (the contract is in cpu_ops.h): the ops
// of kernels/cuda on device memory, queued on one stream. T (Act) is float or bf16; parameters are
// fp32 masters (Param), gradients and saved statistics fp32. Only the CUDA variant's sources
// include this header (it needs the CUDA runtime's headers, or the emulation's).
//
// A CudaOps is a cheap handle: copies share the stream and the resources (the cuBLASLt handle and
// workspace, rotary tables, the cross-entropy workspace). Nothing synchronises the host except
// the functions that return a host value (download, cross_entropy, sum_of_squares) and
// synchronize(); those wait at most `timeout_s` (0: no limit) and then throw, naming what they
// waited for, so a peer rank that stopped inside a collective the stream waits on ends the job
// instead of hanging it.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>

#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/gelu.h"
#include "kernels/cuda/device_array.h"
#include "trainer/model/config.h"
#include "trainer/model/cpu_ops.h"  // LossSum
#include "trainer/optim/adamw.h"

namespace dj {

template <typename T>
class CudaOps {
 public:
  using Act = T;
  using Param = float;
  using Grad = float;
  using Stat = float;
  template <typename U>
  using Array = cuda::DeviceArray<U>;
  static constexpr bool kOnDevice = true;
  static constexpr const char* kName = "the GPU";

  // Work goes to `stream` (nullptr: the legacy default stream) of the current device.
  explicit CudaOps(cudaStream_t stream = nullptr, double timeout_s = 0.0);
  cudaStream_t stream() const { return stream_; }
  void set_timeout(double seconds);

  // ---- memory ------------------------------------------------------------------------------------
  template <typename U>
  static Array<U> allocate(int64_t count) {
    return Array<U>(static_cast<size_t>(count));
  }
  // Host to device, asynchronous (pageable sources are staged before the call returns).
  template <typename U>
  void upload(U* dst, const U* host, int64_t n) {
    upload_bytes(dst, host, n * static_cast<int64_t>(sizeof(U)));
  }
  // Device to host, after every queued operation (waits).
  template <typename U>
  void download(U* host, const U* src, int64_t n) const {
    download_bytes(host, src, n * static_cast<int64_t>(sizeof(U)));
  }
  template <typename U>
  void copy(U* dst, const U* src, int64_t n) {
    copy_bytes(dst, src, n * static_cast<int64_t>(sizeof(U)));
  }
  template <typename U>
  void fill_zero(U* dst, int64_t n) {
    zero_bytes(dst, n * static_cast<int64_t>(sizeof(U)));
  }
  void accumulate(float* out, const float* in, int64_t n);
  void to_compute(T* dst, const float* src, int64_t n);
  // Waits for every queued operation.
  void synchronize() const;

  // ---- model ops -----------------------------------------------------------------------------------
  void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab, int64_t D);
  void embedding_backward(float* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t vocab, int64_t D);
  void layernorm_forward(T* y, float* mean, float* rstd, const T* x, const T* w, const T* b, int64_t rows, int64_t D,
                         double eps);
  void layernorm_backward(T* dx, float* dw, float* db, const T* dy, const T* x, const T* w, const float* mean,
                          const float* rstd, int64_t rows, int64_t D);
  void linear_forward(T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in, int64_t out);
  void linear_backward(T* dx, float* dW, float* db, const T* dy, const T* x, const T* W, int64_t rows, int64_t in,
                       int64_t out, bool accumulate_dx);
  void matmul(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, const T* B, T* C);
  void matmul_accumulate(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const T* A, const T* B,
                         float* C);
  void gelu_forward(T* y, const T* x, int64_t n, cpu::GeluKind kind);
  void gelu_backward(T* dx, const T* dy, const T* x, int64_t n, cpu::GeluKind kind);
  void rotary_forward(T* x, int64_t BH, int64_t S, int64_t d, int64_t rotary_dims, double base,
                      int64_t position_offset = 0);
  void rotary_backward(T* dx, int64_t BH, int64_t S, int64_t d, int64_t rotary_dims, double base);
  void split_qkv(T* q, T* k, T* v, const T* qkv, int64_t B, int64_t S, int64_t H, int64_t d);
  void join_qkv(T* qkv, const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H, int64_t d);
  void merge_heads(T* merged, const T* heads, int64_t B, int64_t S, int64_t H, int64_t d);
  void split_heads(T* heads, const T* merged, int64_t B, int64_t S, int64_t H, int64_t d);
  void add(T* out, const T* a, const T* b, int64_t n);
  void add3(T* out, const T* x, const T* b, const T* c, int64_t n);
  void causal_attention_forward(T* o, float* lse, const T* q, const T* k, const T* v, int64_t BH, int64_t S,
                                int64_t d, double scale);
  void causal_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v, const T* o,
                                 const float* lse, int64_t BH, int64_t S, int64_t d, double scale);

  // Head sizes the attention kernels support, checked before anything is allocated.
  static void check_config(const ModelConfig& config);
  // The decayed attention runs in its chunkwise form only (the three forms are one function).
  static bool supports(cpu::DecayForm form) { return form == cpu::DecayForm::Chunkwise; }
  void feature_map_forward(T* s, const T* x, const float* P, int64_t rows, int64_t d);
  void feature_map_backward(T* dx, const T* ds, const T* s, const float* P, int64_t rows, int64_t d);
  void feature_weights_forward(T* phi, const T* s, const float* w, int64_t BH, int64_t H, int64_t n, int64_t d);
  void feature_weights_backward(T* ds, float* dw, const T* dphi, const T* s, const float* w, int64_t BH, int64_t H,
                                int64_t n, int64_t d);
  void decay_attention_forward(T* o, const T* fq, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                               int64_t H, int64_t n, int64_t m, int64_t dv, cpu::DecayForm form, int64_t chunk);
  void decay_attention_backward(T* dfq, T* dfk, T* dv, float* dlog_gamma, const T* dout, const T* fq, const T* fk,
                                const T* v, const float* log_gamma, int64_t BH, int64_t H, int64_t n, int64_t m,
                                int64_t dv_size, cpu::DecayForm form, int64_t chunk);
  void copy_rows(T* dst, int64_t dst_stride, const T* src, int64_t src_stride, int64_t rows, int64_t width);
  void cached_attention_step(T* o, const T* q, const T* k_cache, const T* v_cache, int64_t BH, int64_t len,
                             int64_t capacity, int64_t d, double scale);
  void decay_attention_prefill_state(float* state, const T* fk, const T* v, const float* log_gamma, int64_t BH,
                                     int64_t H, int64_t n, int64_t m, int64_t dv, int64_t chunk);
  void decay_attention_step(T* o, float* state, const T* fq, const T* fk, const T* v, const float* log_gamma,
                            int64_t BH, int64_t H, int64_t m, int64_t dv);
  void linear_feature_forward(T* f, const T* x, const float* P, cpu::LinearFeatureMap map, bool query, int64_t BH,
                              int64_t n, int64_t d, int64_t position0, int64_t horizon);
  void linear_feature_backward(T* dx, const T* df, const T* f, const T* x, const float* P, cpu::LinearFeatureMap map,
                               bool query, int64_t BH, int64_t n, int64_t d, int64_t position0, int64_t horizon);
  void append_ones(T* vx, const T* v, int64_t rows, int64_t dv);
  void drop_last_column(T* v, const T* vx, int64_t rows, int64_t dv);
  void normalize_rows_forward(T* o, const T* ox, int64_t rows, int64_t dv);
  void normalize_rows_backward(T* dox, const T* dout, const T* o, const T* ox, int64_t rows, int64_t dv);
  void download_double(double* host, const T* src, int64_t n) const;
  void group_norm_gate_forward(T* y, float* mean, float* rstd, const T* x, const float* w, const float* b,
                               const T* gate, int64_t rows, int64_t channels, int64_t groups, double eps);
  void group_norm_gate_backward(T* dx, T* dgate, float* dw, float* db, const T* dy, const T* x, const T* gate,
                                const float* w, const float* b, const float* mean, const float* rstd, int64_t rows,
                                int64_t channels, int64_t groups);
  LossSum cross_entropy(T* logits, const int32_t* targets, int64_t rows, int64_t vocab, bool write_gradient,
                        double grad_scale);
  // As CpuOps::distill_cross_entropy (waits for the totals).
  LossSum distill_cross_entropy(T* logits, const T* teacher, const int32_t* targets, int64_t rows, int64_t vocab,
                                bool write_gradient, double grad_scale, double weight, double temperature);
  // As CpuOps::squared_error (waits for the sum).
  double squared_error(T* grad, const T* a, const T* b, int64_t n, double grad_scale);

  // ---- optimizer ops -------------------------------------------------------------------------------
  void adamw_step(float* params, float* m, float* v, const float* grads, const uint8_t* decay, const uint8_t* update,
                  int64_t n, int64_t step, double lr, const AdamWConfig& config);
  double sum_of_squares(const float* grads, int64_t n);
  void clip_by_global_norm(float* grads, int64_t n, double norm, double max_norm);

  // "3.1 GiB of 139.8 GiB in use (peak 12.4 GiB)" for the current device.
  std::string memory_report() const;

 private:
  struct Resources;
  void upload_bytes(void* dst, const void* host, int64_t bytes);
  void download_bytes(void* host, const void* src, int64_t bytes) const;
  void copy_bytes(void* dst, const void* src, int64_t bytes);
  void zero_bytes(void* dst, int64_t bytes);
  // Waits for `stream_` within the timeout; `what` names it in the error.
  void wait(const char* what) const;

  cudaStream_t stream_ = nullptr;
  std::shared_ptr<Resources> resources_;
};

extern template class CudaOps<float>;
extern template class CudaOps<__nv_bfloat16>;

}  // namespace dj
