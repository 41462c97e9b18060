// Vectorised softmax-row arithmetic: the row maximum and exp(x - max) with its sum.
//
// glibc's exp is a scalar call (GCC vectorises it only under -ffast-math), and the softmaxes of
// attention tiles, of the cross entropy over the vocabulary and of the DiJiang feature map
// would spend as long in it as in their GEMMs. These helpers use a SIMD exp written with GCC
// vector extensions instead: 16-byte vectors on any build (SSE2 on x86-64), 32-byte ones (AVX2)
// where the CPU has them (simd.h; the two give the same bits). It is accurate to 1.2 ulp in float
// and in double and about 3x faster than expf in float with 16 bytes, 5x with 32.
// Every element takes the same code path and sums are added in a fixed order, so results do
// not depend on the row length's remainder, alignment, thread count or vector width.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numbers>

#include "kernels/cpu/simd.h"

namespace dj::cpu {

namespace vector_exp_detail {

template <typename T>
struct Scalar;
template <>
struct Scalar<float> {
  using Uint = uint32_t;
  static constexpr int kMantissaBits = 23;
  static constexpr uint32_t kExponentBias = 127;
  static constexpr float kRoundShift = 0x1.8p23f;  // x + this rounds x to an integer
  static constexpr float kUnderflow = -87.0f;      // exp of less is flushed to 0
  static constexpr float kLn2Hi = 0x1.63p-1f;      // ln 2 = kLn2Hi + kLn2Lo, n * kLn2Hi exact
  static constexpr float kLn2Lo = -0x1.bd0106p-13f;
  static constexpr int kDegree = 7;  // Taylor terms for |r| <= ln2/2: error r^8/8! ~ 5e-9
};
template <>
struct Scalar<double> {
  using Uint = uint64_t;
  static constexpr int kMantissaBits = 52;
  static constexpr uint64_t kExponentBias = 1023;
  static constexpr double kRoundShift = 0x1.8p52;
  static constexpr double kUnderflow = -708.0;
  static constexpr double kLn2Hi = 0x1.62e42fee00000p-1;
  static constexpr double kLn2Lo = 0x1.a39ef35793c76p-33;
  static constexpr int kDegree = 13;  // error r^14/14! ~ 4e-18
};

// Vectors of T, Bytes wide (16 or 32).
template <typename T, int Bytes = 16>
struct Simd : Scalar<T> {
  typedef T V __attribute__((vector_size(Bytes)));
  typedef typename Scalar<T>::Uint Bits __attribute__((vector_size(Bytes)));
  static constexpr int kLanes = Bytes / static_cast<int>(sizeof(T));
};

inline constexpr std::array<double, 14> kInverseFactorials = [] {
  std::array<double, 14> c{};
  double factorial = 1.0;
  for (size_t k = 0; k < c.size(); ++k) {
    if (k > 0) factorial *= static_cast<double>(k);
    c[k] = 1.0 / factorial;
  }
  return c;
}();

// exp of each lane: x = n ln2 + r with n an integer and |r| <= ln2/2, exp(r) from its Taylor
// polynomial, 2^n written straight into the exponent bits. Valid for x <= 0 (softmax
// arguments): results below kUnderflow are 0, -inf gives 0 and NaN stays NaN. Replaces x by its
// exp: vectors go by reference, as GCC warns that passing a 32-byte vector by value in code built
// without AVX would change the ABI (these helpers are always inlined, into AVX2 code for them).
template <typename T, int Bytes = 16>
[[gnu::always_inline]] inline void exp_lanes(typename Simd<T, Bytes>::V& x) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  const V shifted = x * std::numbers::log2e_v<T> + S::kRoundShift;
  const V n = shifted - S::kRoundShift;
  const V r = (x - n * S::kLn2Hi) - n * S::kLn2Lo;
  V poly = V{} + static_cast<T>(kInverseFactorials[S::kDegree]);
  for (int k = S::kDegree - 1; k >= 0; --k)
    poly = poly * r + static_cast<T>(kInverseFactorials[static_cast<size_t>(k)]);
  // The low mantissa bits of `shifted` hold n: move n + bias into the exponent field.
  typename S::Bits bits;
  std::memcpy(&bits, &shifted, sizeof bits);
  bits = (bits + S::kExponentBias) << S::kMantissaBits;
  V power;
  std::memcpy(&power, &bits, sizeof power);
  x = x < S::kUnderflow ? V{} : poly * power;
}

// exp_shifted sums its values per lane in T over blocks of this many elements, and the block
// sums in double. A float lane then adds at most 16 values (as in one 64-wide attention tile
// row), so a 50k-wide row keeps its sum to double accuracy; double lanes throughout would need
// two more of the 16 SSE registers that the polynomial already fills, and measured 25-60% slower.
inline constexpr int64_t kSumBlock = 64;

}  // namespace vector_exp_detail

namespace vector_exp_detail {

// row_max on Bytes-wide vectors.
template <typename T, int Bytes>
[[gnu::always_inline]] inline T row_max_lanes(const T* x, int64_t n) {
  using S = Simd<T, Bytes>;
  using V = typename S::V;
  V lane_max = V{} - std::numeric_limits<T>::infinity();
  int64_t j = 0;
  for (; j + S::kLanes <= n; j += S::kLanes) {
    V v;
    std::memcpy(&v, x + j, sizeof v);
    lane_max = v > lane_max ? v : lane_max;
  }
  T result = -std::numeric_limits<T>::infinity();
  for (int lane = 0; lane < S::kLanes; ++lane) result = std::max(result, lane_max[lane]);
  for (; j < n; ++j) result = std::max(result, x[j]);
  return result;
}

#if DJ_SIMD_DISPATCH
template <typename T>
[[gnu::target("avx2")]] T row_max_avx2(const T* x, int64_t n) {
  return row_max_lanes<T, 32>(x, n);
}
#endif

}  // namespace vector_exp_detail

// max of x[0..n), n >= 1 (NaNs are passed over). The maximum does not depend on the vector width
// (only which zero a row of zeros of both signs returns does, and exp(x - 0) = exp(x + 0)).
template <typename T>
T row_max(const T* x, int64_t n) {
#if DJ_SIMD_DISPATCH
  if (simd_width() == SimdWidth::Bytes32) return vector_exp_detail::row_max_avx2(x, n);
#endif
  return vector_exp_detail::row_max_lanes<T, 16>(x, n);
}

namespace vector_exp_detail {

// exp_shifted on Bytes-wide vectors. The lane sums are kept in 16-byte vectors, each wide vector
// added as its 16-byte parts in order, so that every width adds the same values in the same order.
template <typename T, int Bytes>
[[gnu::always_inline]] inline double exp_shifted_lanes(const T* x, int64_t n, T shift, T* out) {
  using W = Simd<T, Bytes>;
  using N = Simd<T, 16>;
  static_assert(kSumBlock % W::kLanes == 0);
  const int64_t whole = n - n % N::kLanes;  // elements in whole 16-byte vectors
  double sum = 0;
  for (int64_t block = 0; block < whole; block += kSumBlock) {
    const int64_t block_end = std::min(whole, block + kSumBlock);
    typename N::V lane_sums = {};
    int64_t j = block;
    for (; j + W::kLanes <= block_end; j += W::kLanes) {
      typename W::V v;
      std::memcpy(&v, x + j, sizeof v);
      v -= shift;
      exp_lanes<T, Bytes>(v);
      if (out != nullptr) std::memcpy(out + j, &v, sizeof v);
      for (int part = 0; part < Bytes / 16; ++part) {
        typename N::V p;
        std::memcpy(&p, reinterpret_cast<const char*>(&v) + 16 * part, sizeof p);
        lane_sums += p;
      }
    }
    for (; j < block_end; j += N::kLanes) {  // a last 16-byte vector that a wide one overran
      typename N::V v;
      std::memcpy(&v, x + j, sizeof v);
      v -= shift;
      exp_lanes<T, 16>(v);
      if (out != nullptr) std::memcpy(out + j, &v, sizeof v);
      lane_sums += v;
    }
    for (int lane = 0; lane < N::kLanes; ++lane) sum += static_cast<double>(lane_sums[lane]);
  }
  // The ragged end goes through the same code, zero-padded, so every element gets the same exp.
  const int64_t rest = n - whole;
  if (rest > 0) {
    T tail[N::kLanes] = {};
    std::copy(x + whole, x + n, tail);
    typename N::V v;
    std::memcpy(&v, tail, sizeof v);
    v -= shift;
    exp_lanes<T, 16>(v);
    std::memcpy(tail, &v, sizeof v);
    if (out != nullptr) std::copy(tail, tail + rest, out + whole);
    for (int64_t t = 0; t < rest; ++t) sum += static_cast<double>(tail[t]);
  }
  return sum;
}

#if DJ_SIMD_DISPATCH
template <typename T>
[[gnu::target("avx2")]] double exp_shifted_avx2(const T* x, int64_t n, T shift, T* out) {
  return exp_shifted_lanes<T, 32>(x, n, shift, out);
}
#endif

}  // namespace vector_exp_detail

// out[j] = exp(x[j] - shift) for j < n, for arguments x[j] - shift <= 0 (see exp_lanes).
// Returns the sum of these values, in double. `out` may be x (in place), or null when only the
// sum is wanted (a loss without its gradient).
template <typename T>
double exp_shifted(const T* x, int64_t n, T shift, T* out) {
#if DJ_SIMD_DISPATCH
  if (simd_width() == SimdWidth::Bytes32) return vector_exp_detail::exp_shifted_avx2(x, n, shift, out);
#endif
  return vector_exp_detail::exp_shifted_lanes<T, 16>(x, n, shift, out);
}

}  // namespace dj::cpu
