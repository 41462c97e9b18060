#include "kernels/cpu/simd.h"

#include <atomic>
#include <cstdlib>
#include <string_view>

#include "kernels/core/error.h"

namespace dj::cpu {

namespace {

// -1 until the first call decides.
std::atomic<int> g_width{-1};

SimdWidth width_from_environment() {
  const char* value = std::getenv("DIJIANG_SIMD");
  const std::string_view requested = value != nullptr ? value : "";
  if (requested.empty() || requested == "auto") return cpu_has_avx2() ? SimdWidth::Bytes32 : SimdWidth::Bytes16;
  if (requested == "sse2") return SimdWidth::Bytes16;
  if (requested == "avx2") {
    if (!cpu_has_avx2()) fail("DIJIANG_SIMD=avx2, but this CPU has no AVX2");
    return SimdWidth::Bytes32;
  }
  fail("DIJIANG_SIMD='{}' is not auto, sse2 or avx2", requested);
}

}  // namespace

bool cpu_has_avx2() {
#if DJ_SIMD_DISPATCH
  // libgcc's and compiler-rt's CPU probe also checks that the OS saves the 32-byte registers.
  static const bool has = __builtin_cpu_supports("avx2") != 0;
  return has;
#else
  return false;
#endif
}

SimdWidth simd_width() {
  const int width = g_width.load(std::memory_order_relaxed);
  if (width >= 0) return static_cast<SimdWidth>(width);
  const SimdWidth chosen = width_from_environment();
  g_width.store(static_cast<int>(chosen), std::memory_order_relaxed);
  return chosen;
}

void set_simd_width(SimdWidth width) {
  if (width == SimdWidth::Bytes32 && !cpu_has_avx2()) fail("set_simd_width: this CPU has no AVX2");
  g_width.store(static_cast<int>(width), std::memory_order_relaxed);
}

std::string simd_description(SimdWidth width) {
#if DJ_SIMD_DISPATCH
  return width == SimdWidth::Bytes32 ? "AVX2 (8 float lanes)" : "SSE2 (4 float lanes)";
#else
  return width == SimdWidth::Bytes32 ? "32-byte vectors (8 float lanes)" : "16-byte vectors (4 float lanes)";
#endif
}

}  // namespace dj::cpu
