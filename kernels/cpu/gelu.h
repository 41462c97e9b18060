// GELU, exact (erf, HF "gelu") and tanh approximation (HF "gelu_new", "gelu_pytorch_tanh").
#pragma once
#include <cstdint>

namespace dj::cpu {

enum class GeluKind { Erf, Tanh };

template <typename T>
void gelu_forward(T* y, const T* x, int64_t n, GeluKind kind);

// dx = dy * gelu'(x); dx may alias dy.
template <typename T>
void gelu_backward(T* dx, const T* dy, const T* x, int64_t n, GeluKind kind);

}  // namespace dj::cpu
