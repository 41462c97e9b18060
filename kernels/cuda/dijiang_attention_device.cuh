// Device helpers of the DiJiang attention kernels (kernels/cuda/dijiang_*.cu): nvcc only,
// not part of the API.
//
// Matrix products run per warp on operands in shared memory:
//   - bf16: ldmatrix (x4, plain or .trans) + mma.sync.m16n8k16 (bf16 x bf16 -> fp32), which both
//     sm_80 and sm_90 have. wgmma (sm_90a only) is not used: the build targets plain sm_80;sm_90.
//   - fp32: the same warp tile computed with FFMA from shared memory, so fp32 results stay at
//     fp32 accuracy (no TF32).
// Both paths leave the accumulators in the mma.sync C-fragment layout: for the 16 x 8 tile
// (mt, nt), lane l holds rows g = l / 4 and g + 8, columns 2 (l % 4) and 2 (l % 4) + 1;
// acc_pairs() hands out (row, column, value pair) so epilogues never depend on the layout.
//
// Shared-memory tiles are row-major with a padded leading dimension: kPad<T> extra elements (16
// bytes) per row keep every row 16-byte aligned for ldmatrix/cp.async and put the 8 rows of an
// 8 x 8 ldmatrix block in 8 different bank groups (row stride / 16 bytes is odd for widths that
// are multiples of 16); for fp32 the 4-float pad makes the 8 rows g of a fragment hit 8 banks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/cuda_check.h"

namespace dj::cuda::attn {

using bf16 = __nv_bfloat16;

template <typename T>
inline constexpr bool kIsBf16 = std::is_same_v<T, bf16>;
// Elements per 16 bytes: the row pad of shared tiles and the width of one vector access.
template <typename T>
inline constexpr int kVec = 16 / static_cast<int>(sizeof(T));
template <typename T>
inline constexpr int kPad = kVec<T>;

// ---- host side -----------------------------------------------------------------------------------

inline int device_attribute(cudaDeviceAttr attribute) {
  int device = 0;
  DJ_CUDA_CHECK(cudaGetDevice(&device));
  int value = 0;
  DJ_CUDA_CHECK(cudaDeviceGetAttribute(&value, attribute, device));
  return value;
}
inline size_t max_shared_optin() {
  return static_cast<size_t>(device_attribute(cudaDevAttrMaxSharedMemoryPerBlockOptin));
}
inline int sm_count() { return device_attribute(cudaDevAttrMultiProcessorCount); }

inline void require(bool ok, const char* op, const char* message) {
  if (!ok) throw std::invalid_argument(std::string(op) + ": " + message);
}
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Lets `kernel` take `bytes` of dynamic shared memory (needed above 48 KB).
template <typename Kernel>
inline void allow_shared(Kernel* kernel, size_t bytes) {
  DJ_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                     static_cast<int>(bytes)));
}

// Bump allocator for shared-memory layouts, identical on host (to size the launch) and device.
struct Bump {
  size_t bytes = 0;
  __host__ __device__ size_t take(size_t n) {
    const size_t at = bytes;
    bytes += (n + 15) / 16 * 16;
    return at;
  }
};

// ---- conversions ---------------------------------------------------------------------------------

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(bf16 x) { return __bfloat162float(x); }
template <typename T>
__device__ __forceinline__ T from_f(float x) {
  if constexpr (kIsBf16<T>)
    return __float2bfloat16_rn(x);
  else
    return x;
}
// Stores two consecutive values (p 4-byte aligned for bf16, 8-byte for fp32).
template <typename T>
__device__ __forceinline__ void store2(T* p, float a, float b) {
  if constexpr (kIsBf16<T>)
    *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(a, b);
  else
    *reinterpret_cast<float2*>(p) = make_float2(a, b);
}

// ---- PTX wrappers --------------------------------------------------------------------------------
// Under DIJIANG_CUDA_EMULATION each calls the CPU emulation's model of the instruction
// (tests/cuda_emulation), which follows the PTX ISA.

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
#if DIJIANG_CUDA_EMULATION
  return ::dj::emu::shared_address(p, "smem_u32");
#else
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
#endif
}
// 16 bytes global -> shared, asynchronously; valid = false writes 16 zero bytes (src not read).
__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
#if DIJIANG_CUDA_EMULATION
  ::dj::emu::cp_async(dst, src, 16, bytes);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(bytes)
               : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if DIJIANG_CUDA_EMULATION
  ::dj::emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if DIJIANG_CUDA_EMULATION
  ::dj::emu::cp_async_wait_all();
#else
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const void* p) {
#if DIJIANG_CUDA_EMULATION
  ::dj::emu::ldmatrix(r, 4, false, p, __FILE__, __LINE__);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
#endif
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], const void* p) {
#if DIJIANG_CUDA_EMULATION
  ::dj::emu::ldmatrix(r, 4, true, p, __FILE__, __LINE__);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(p))
               : "memory");
#endif
}
// d += a · b for one 16 x 8 x 16 bf16 tile (fp32 accumulators).
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if DIJIANG_CUDA_EMULATION
  ::dj::emu::mma_m16n8k16_bf16(d, a, b0, b1, d, __FILE__, __LINE__);
#else
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// ---- warp tile product ---------------------------------------------------------------------------
// acc[mt][nt] += Σ_{k in [k_begin, k_end)} A(r, k) B(k, c) for the (16 MT) x (8 NT) tile at (r0, c0).
// Element addresses in shared memory:
//   A(r, k) = A_COL ? A[k * lda + r] : A[r * lda + k]
//   B(k, c) = B_COL ? B[c * ldb + k] : B[k * ldb + c]
// k_begin, k_end are multiples of 16; NT is even; every row start is 16-byte aligned.
template <typename T, int MT, int NT, bool A_COL, bool B_COL>
__device__ __forceinline__ void warp_mma(float (&acc)[MT][NT][4], const T* A, int lda, const T* B, int ldb, int r0,
                                         int c0, int k_begin, int k_end) {
  static_assert(NT % 2 == 0, "n-tiles come in pairs");
  const int lane = static_cast<int>(threadIdx.x) & 31;
  if constexpr (kIsBf16<T>) {
    // ldmatrix x4: lane l addresses row (l % 8) of 8 x 8 block l / 8.
    const int blk = lane >> 3, row8 = lane & 7;
    for (int k0 = k_begin; k0 < k_end; k0 += 16) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        // Blocks 0..3 = (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15).
        const int r = r0 + 16 * mt + (blk & 1) * 8;
        const int k = k0 + (blk >> 1) * 8;
        if constexpr (!A_COL)
          ldsm_x4(a[mt], A + (r + row8) * lda + k);
        else
          ldsm_x4_trans(a[mt], A + (k + row8) * lda + r);
      }
#pragma unroll
      for (int np = 0; np < NT / 2; ++np) {
        // Blocks 0..3 = (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15).
        const int k = k0 + (blk & 1) * 8;
        const int c = c0 + 16 * np + (blk >> 1) * 8;
        uint32_t b[4];
        if constexpr (!B_COL)
          ldsm_x4_trans(b, B + (k + row8) * ldb + c);
        else
          ldsm_x4(b, B + (c + row8) * ldb + k);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          mma_bf16(acc[mt][2 * np], a[mt], b[0], b[1]);
          mma_bf16(acc[mt][2 * np + 1], a[mt], b[2], b[3]);
        }
      }
    }
  } else {
    const int g = lane >> 2, t = lane & 3;
#pragma unroll 4
    for (int k = k_begin; k < k_end; ++k) {
      float a[MT][2], b[NT][2];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int r = r0 + 16 * mt + g;
        if constexpr (!A_COL) {
          a[mt][0] = to_f(A[r * lda + k]);
          a[mt][1] = to_f(A[(r + 8) * lda + k]);
        } else {
          a[mt][0] = to_f(A[k * lda + r]);
          a[mt][1] = to_f(A[k * lda + r + 8]);
        }
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const int c = c0 + 8 * nt + 2 * t;
        if constexpr (!B_COL) {
          b[nt][0] = to_f(B[k * ldb + c]);
          b[nt][1] = to_f(B[k * ldb + c + 1]);
        } else {
          b[nt][0] = to_f(B[c * ldb + k]);
          b[nt][1] = to_f(B[(c + 1) * ldb + k]);
        }
      }
#pragma unroll
      for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
          acc[mt][nt][0] = fmaf(a[mt][0], b[nt][0], acc[mt][nt][0]);
          acc[mt][nt][1] = fmaf(a[mt][0], b[nt][1], acc[mt][nt][1]);
          acc[mt][nt][2] = fmaf(a[mt][1], b[nt][0], acc[mt][nt][2]);
          acc[mt][nt][3] = fmaf(a[mt][1], b[nt][1], acc[mt][nt][3]);
        }
    }
  }
}

// fn(row, col, v0, v1) for every accumulator pair: (row, col) and (row, col + 1) of the tile at
// (r0, c0); col is even. v0, v1 are references into acc.
template <int MT, int NT, typename Fn>
__device__ __forceinline__ void acc_pairs(float (&acc)[MT][NT][4], int r0, int c0, Fn&& fn) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        fn(r0 + 16 * mt + g + 8 * half, c0 + 8 * nt + 2 * t, acc[mt][nt][2 * half], acc[mt][nt][2 * half + 1]);
}

// The same walk over two accumulator tiles of one shape: fn(row, col, a0, a1, b0, b1).
template <int MT, int NT, typename Fn>
__device__ __forceinline__ void acc_pairs2(float (&a)[MT][NT][4], float (&b)[MT][NT][4], int r0, int c0, Fn&& fn) {
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int half = 0; half < 2; ++half)
        fn(r0 + 16 * mt + g + 8 * half, c0 + 8 * nt + 2 * t, a[mt][nt][2 * half], a[mt][nt][2 * half + 1],
           b[mt][nt][2 * half], b[mt][nt][2 * half + 1]);
}

template <int MT, int NT>
__device__ __forceinline__ void acc_zero(float (&acc)[MT][NT][4]) {
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.f;
}

// ---- tiles between global and shared memory ------------------------------------------------------
// Copies the [rows x cols] tile at g (leading dimension ld) into s (leading dimension lds),
// zero-filling rows >= rows_valid and columns >= cols_valid. cols is a multiple of kVec<T>. With vec
// (g 16-byte aligned, ld and cols_valid multiples of kVec<T>) it issues 16-byte cp.async copies that
// land at the next cp_async_wait_all(); otherwise it copies with plain loads and stores. g must be a
// valid address even when rows_valid is 0. Threads tid = 0..nthr-1 share the work.
template <typename T>
__device__ __forceinline__ void load_tile(T* s, int lds, const T* g, int64_t ld, int rows, int cols, int rows_valid,
                                          int cols_valid, bool vec, int tid, int nthr) {
  if (vec) {
    constexpr int V = kVec<T>;
    const int per_row = cols / V;
    for (int idx = tid; idx < rows * per_row; idx += nthr) {
      const int r = idx / per_row, c = (idx - r * per_row) * V;
      const bool ok = r < rows_valid && c < cols_valid;
      cp_async16(s + r * lds + c, ok ? g + r * ld + c : g, ok);
    }
  } else {
    for (int idx = tid; idx < rows * cols; idx += nthr) {
      const int r = idx / cols, c = idx - r * cols;
      s[r * lds + c] = (r < rows_valid && c < cols_valid) ? g[r * ld + c] : from_f<T>(0.f);
    }
  }
}

// Copies rows < rows_valid, columns < cols_valid of the shared tile s to g (16-byte stores with vec).
template <typename T>
__device__ __forceinline__ void store_tile(T* g, int64_t ld, const T* s, int lds, int rows_valid, int cols_valid,
                                           bool vec, int tid, int nthr) {
  if (vec) {
    constexpr int V = kVec<T>;
    const int per_row = cols_valid / V;
    for (int idx = tid; idx < rows_valid * per_row; idx += nthr) {
      const int r = idx / per_row, c = (idx - r * per_row) * V;
      *reinterpret_cast<uint4*>(g + r * ld + c) = *reinterpret_cast<const uint4*>(s + r * lds + c);
    }
  } else {
    for (int idx = tid; idx < rows_valid * cols_valid; idx += nthr) {
      const int r = idx / cols_valid, c = idx - r * cols_valid;
      g[r * ld + c] = s[r * lds + c];
    }
  }
}

// ---- warp reductions -----------------------------------------------------------------------------
// Over the 4 lanes of a quad (the lanes holding one accumulator row).
__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

}  // namespace dj::cuda::attn
