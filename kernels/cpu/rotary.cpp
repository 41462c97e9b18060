#include "kernels/cpu/rotary.h"

#include <cmath>
#include <vector>

#include "kernels/core/error.h"

namespace dj::cpu {

namespace {

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

// Rotates every pair (i, i + r/2) of each head vector by angle sign * p * inv_freq[i]:
// sign +1 is the forward rotation, -1 its inverse (= transpose), which is the backward.
template <typename T>
void rotate(T* x, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
            int64_t position_offset, double sign) {
  if (rotary_dims < 0 || rotary_dims % 2 != 0 || rotary_dims > d)
    fail("rotary: rotary_dims {} must be even and within [0, head size {}]", rotary_dims, d);
  const int64_t half = rotary_dims / 2;
  if (half == 0 || BH == 0 || T_len == 0) return;

  // cos/sin depend only on (position, i): tabulate once in double and share across heads.
  std::vector<double> cos_table(static_cast<size_t>(T_len * half));
  std::vector<double> sin_table(cos_table.size());
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq =
        std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dims));
    for (int64_t t = 0; t < T_len; ++t) {
      const double angle = static_cast<double>(position_offset + t) * inv_freq;
      cos_table[static_cast<size_t>(t * half + i)] = std::cos(angle);
      sin_table[static_cast<size_t>(t * half + i)] = sign * std::sin(angle);
    }
  }

#pragma omp parallel for schedule(static) if (BH * T_len * rotary_dims > kParallelThreshold)
  for (int64_t row = 0; row < BH * T_len; ++row) {
    const int64_t t = row % T_len;
    const double* c = cos_table.data() + t * half;
    const double* s = sin_table.data() + t * half;
    T* lo = x + row * d;
    T* hi = lo + half;
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(lo[i]);
      const double b = static_cast<double>(hi[i]);
      lo[i] = static_cast<T>(a * c[i] - b * s[i]);
      hi[i] = static_cast<T>(b * c[i] + a * s[i]);
    }
  }
}

}  // namespace

template <typename T>
void rotary_forward(T* x, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
                    int64_t position_offset) {
  rotate(x, BH, T_len, d, rotary_dims, base, position_offset, 1.0);
}

template <typename T>
void rotary_backward(T* dx, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
                     int64_t position_offset) {
  rotate(dx, BH, T_len, d, rotary_dims, base, position_offset, -1.0);
}

#define DJ_INSTANTIATE(T)                                                                   \
  template void rotary_forward<T>(T*, int64_t, int64_t, int64_t, int64_t, double, int64_t); \
  template void rotary_backward<T>(T*, int64_t, int64_t, int64_t, int64_t, double, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
