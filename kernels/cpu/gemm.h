// Matrix products through OpenBLAS. Row-major throughout; T is float or double.
#pragma once
#include <cstdint>

namespace dj::cpu {

// C[M,N] = alpha * op(A) * op(B) + beta * C, op(A) is [M,K], op(B) is [K,N]. The result is the
// same to the bit for any OpenMP thread count (the product is cut into blocks decided by its shape,
// each a single-threaded BLAS call).
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          const T* B, T beta, T* C);

// y[rows,out] = x[rows,in] * W[out,in]^T + b (b may be null). W uses the PyTorch Linear layout.
template <typename T>
void linear_forward(T* y, const T* x, const T* W, const T* b, int64_t rows, int64_t in, int64_t out);

// dx = dy * W (added to dx when accumulate_dx), dW += dy^T x, db += column sums of dy.
// dx, dW, db may each be null to skip that gradient.
template <typename T>
void linear_backward(T* dx, T* dW, T* db, const T* dy, const T* x, const T* W, int64_t rows,
                     int64_t in, int64_t out, bool accumulate_dx);

}  // namespace dj::cpu
