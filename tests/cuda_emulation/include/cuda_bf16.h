// bfloat16 of the CPU emulation: __nv_bfloat16 and __nv_bfloat162 with the toolkit's conversions
// (round to nearest even; NaN stays NaN, overflow rounds to infinity), usable on host and device.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "cuda_runtime.h"

namespace dj::emu {

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
// float -> bfloat16 bits, round to nearest even; NaN becomes a quiet NaN of the same sign.
inline uint16_t bf16_round(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
// double -> bfloat16 bits with a single rounding: the double is first rounded to float with
// round-to-odd (exact for the later rounding, float having 16 more significand bits than
// bfloat16), then to nearest even.
inline uint16_t bf16_round(double d) {
  float f = static_cast<float>(d);
  const double back = static_cast<double>(f);
  if (back != d && d == d && f - f == 0.0f) {  // inexact, finite
    uint32_t u = float_bits(f);
    if (std::fabs(back) > std::fabs(d)) u -= 1;  // rounded away from zero: the neighbour toward zero
    u |= 1u;           // sticky bit
    f = bits_float(u);
  }
  return bf16_round(f);
}

}  // namespace dj::emu

struct __nv_bfloat16 {
  unsigned short __x;

  __nv_bfloat16() = default;
  __nv_bfloat16(float f) : __x(::dj::emu::bf16_round(f)) {}
  __nv_bfloat16(double d) : __x(::dj::emu::bf16_round(d)) {}
  operator float() const { return ::dj::emu::bits_float(static_cast<uint32_t>(__x) << 16); }
};

struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x, y;
};

typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

inline __nv_bfloat16 dj_emu_bf16_from_bits(uint16_t bits) {
  __nv_bfloat16 h;
  h.__x = bits;
  return h;
}
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return dj_emu_bf16_from_bits(::dj::emu::bf16_round(f)); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }
inline __nv_bfloat16 __double2bfloat16(double d) { return dj_emu_bf16_from_bits(::dj::emu::bf16_round(d)); }
inline float __bfloat162float(__nv_bfloat16 h) { return ::dj::emu::bits_float(static_cast<uint32_t>(h.__x) << 16); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
  return __nv_bfloat162{__float2bfloat16_rn(a), __float2bfloat16_rn(b)};
}
inline __nv_bfloat162 __float2bfloat162_rn(float a) { return __floats2bfloat162_rn(a, a); }
inline float __low2float(__nv_bfloat162 h) { return __bfloat162float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return __bfloat162float(h.y); }
