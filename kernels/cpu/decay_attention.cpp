// The decayed causal linear attention of DiJiang (docs/method.md, section 2 step 6
// and section 4) in its three forms: the arguments are checked here and each form runs in its own file
// (decay_attention_parallel.cpp, _chunkwise.cpp with the prefill state, _recurrent.cpp with the
// decoding step; what they share is in decay_attention_rows.h):
//
//   o_i = Σ_{j<=i} γ^(i−j) ⟨fq_i, fk_j⟩ v_j,   γ = exp(log γ) per head.
//
// The reference code builds this from position tables γ^i and γ^(−j); γ^(−j) overflows float
// after a few thousand tokens, so every kernel here forms only relative exponents that are >= 0
// (i − j on or below the diagonal, chunk-local offsets, the chunk length), as exp(k · log γ)
// evaluated in double. All such powers are <= 1 when γ < 1.
//
// Every form works on one (batch, head) row bh at a time, in a fixed order, and the OpenMP loops
// hand out whole rows; dlog γ is reduced per row in double and summed over rows in order. The
// results are therefore bit-identical for any thread count.
//
// The gradient of log γ: every power γ^k used by a form contributes k · γ^k · (its adjoint), i.e.
// "Σ over positions of relative exponent × contribution" (section 4). Each form's file spells out
// which powers it uses; finite differences in tests/unit/test_dijiang_ops.cpp confirm each one.
#include "kernels/cpu/decay_attention_rows.h"

namespace dj::cpu {

using namespace decay;

template <typename T>
void decay_attention_forward(T* o, const T* fq, const T* fk, const T* v, const T* log_gamma, int64_t BH, int64_t H,
                             int64_t n, int64_t m, int64_t dv, DecayForm form, int64_t chunk) {
  check_shapes("decay_attention_forward", BH, H, n, m, dv);
  if (form == DecayForm::Chunkwise) check_chunk("decay_attention_forward", chunk);
  const ForwardRow<T> all{o, fq, fk, v, n, m, dv};
  const bool threaded = BH > 1 && BH * n * m * dv > kParallelWork;
  switch (form) {
    case DecayForm::Parallel: parallel_forward(all, log_gamma, BH, H, threaded); break;
    case DecayForm::Chunkwise: chunkwise_forward(all, log_gamma, BH, H, chunk, threaded); break;
    case DecayForm::Recurrent: recurrent_forward(all, log_gamma, BH, H, threaded); break;
  }
}

template <typename T>
void decay_attention_backward(T* dfq, T* dfk, T* dv, T* dlog_gamma, const T* dout, const T* fq, const T* fk,
                              const T* v, const T* log_gamma, int64_t BH, int64_t H, int64_t n, int64_t m,
                              int64_t dv_size, DecayForm form, int64_t chunk) {
  check_shapes("decay_attention_backward", BH, H, n, m, dv_size);
  if (form == DecayForm::Chunkwise) check_chunk("decay_attention_backward", chunk);
  const BackwardRow<T> all{dfq, dfk, dv, dout, fq, fk, v, n, m, dv_size};
  const bool threaded = BH > 1 && BH * n * m * dv_size > kParallelWork;
  std::vector<double> row_dlog(static_cast<size_t>(BH), 0.0);
  switch (form) {
    case DecayForm::Parallel: parallel_backward(all, log_gamma, BH, H, threaded, row_dlog.data()); break;
    case DecayForm::Chunkwise: chunkwise_backward(all, log_gamma, BH, H, chunk, threaded, row_dlog.data()); break;
    case DecayForm::Recurrent: recurrent_backward(all, log_gamma, BH, H, threaded, row_dlog.data()); break;
  }
  if (dlog_gamma != nullptr) add_dlog_gamma(dlog_gamma, row_dlog, H);
}

#define DJ_INSTANTIATE(T)                                                                                       \
  template void decay_attention_forward<T>(T*, const T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, \
                                           int64_t, int64_t, DecayForm, int64_t);                               \
  template void decay_attention_backward<T>(T*, T*, T*, T*, const T*, const T*, const T*, const T*, const T*,     \
                                            int64_t, int64_t, int64_t, int64_t, int64_t, DecayForm, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
