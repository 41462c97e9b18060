// The vector width of the CPU ops' own SIMD code (the softmax exp of vector_exp.h and the GELU).
//
// The build targets baseline x86-64, so that one binary runs on any x86-64 CPU: its vector code
// is 16 bytes wide (SSE2, 4 float lanes). Where the CPU has AVX2, the hot loops run a second copy
// compiled for it, 32 bytes wide (8 float lanes), chosen once per process. The two copies give
// the same bits: every lane does the same IEEE operations in the same order (AVX2 is enabled
// without FMA, so no multiply-add is contracted), and sums are accumulated in 4-lane order on
// both. DIJIANG_SIMD=sse2 forces the 16-byte copy, DIJIANG_SIMD=avx2 insists on the wide one.
#pragma once
#include <string>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define DJ_SIMD_DISPATCH 1
#else
#define DJ_SIMD_DISPATCH 0
#endif

namespace dj::cpu {

enum class SimdWidth { Bytes16, Bytes32 };

// Whether the CPU and the operating system support AVX2.
bool cpu_has_avx2();
// The width in use: 32 bytes when the CPU has AVX2, unless DIJIANG_SIMD says otherwise (read on
// the first call; an unknown value or avx2 on a CPU without it is an error).
SimdWidth simd_width();
// Forces a width for the rest of the process (tests and benchmarks that compare the two).
// Fails for 32 bytes on a CPU without AVX2.
void set_simd_width(SimdWidth width);
// "AVX2 (8 float lanes)" or "SSE2 (4 float lanes)".
std::string simd_description(SimdWidth width);

}  // namespace dj::cpu
