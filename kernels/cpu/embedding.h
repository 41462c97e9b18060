// Token embedding lookup and its scatter-add backward.
#pragma once
#include <cstdint>

namespace dj::cpu {

// out[i, :] = table[ids[i], :]. ids must lie in [0, vocab): checked, throws dj::Error otherwise.
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int64_t n, int64_t vocab,
                       int64_t channels);

// dtable[ids[i], :] += dout[i, :], adding the positions in order for every thread count. ids are
// not checked again: pass the ones embedding_forward accepted.
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int64_t n, int64_t channels);

}  // namespace dj::cpu
