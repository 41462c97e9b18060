// The emulation's warp-level behaviour: the mma.sync and ldmatrix fragment layouts of the PTX ISA
// against naive products, shuffles and votes, cp.async's deferred landing, and the errors it must
// report (divergent barriers, warp-mask mismatches).
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "dj_emu/control.h"
#include "kernels/cuda/launch.h"
#include "support.h"

namespace {

using dj::emu::test::Device;

uint16_t bits(__nv_bfloat16 h) { return h.__x; }

// ---- ldmatrix ------------------------------------------------------------------------------------
// Four 8 x 8 matrices of b16 in shared memory, rows padded to 24 elements (48 bytes: 16-byte
// aligned). Lane l supplies the address of row l % 8 of matrix l / 8; every lane stores its count
// registers.
__global__ void ldmatrix_kernel(uint32_t* out, const uint16_t* matrices, int count, bool trans) {
  DJ_DYNAMIC_SHARED(smem);
  auto* s = reinterpret_cast<uint16_t*>(smem);
  constexpr int ld = 24;
  const int lane = static_cast<int>(threadIdx.x);
  for (int i = lane; i < 4 * 64; i += 32) s[(i / 64) * 8 * ld + (i % 64) / 8 * ld + i % 8] = matrices[i];
  __syncwarp();
  uint32_t r[4] = {0, 0, 0, 0};
  const uint16_t* row = s + (lane / 8) * 8 * ld + (lane % 8) * ld;
  dj::emu::ldmatrix(r, count, trans, row, __FILE__, __LINE__);
  for (int i = 0; i < count; ++i) out[lane * 4 + i] = r[i];
}

TEST(Ldmatrix, FragmentsFollowThePtxLayout) {
  std::vector<uint16_t> m(4 * 64);
  for (size_t i = 0; i < m.size(); ++i) m[i] = static_cast<uint16_t>(1000 + i);
  Device<uint16_t> dm(m);
  for (const int count : {1, 2, 4}) {
    for (const bool trans : {false, true}) {
      Device<uint32_t> out(std::vector<uint32_t>(32 * 4, 0));
      dj::cuda::launch("ldmatrix_kernel", ldmatrix_kernel, 1, 32, 4 * 8 * 24 * 2, nullptr, out.get(), dm.get(), count,
                       trans);
      const std::vector<uint32_t> got = out.download();
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < count; ++i) {
          // PTX ISA: without .trans thread l holds row l/4, elements 2(l%4) and 2(l%4)+1 of each
          // matrix; .trans delivers the transpose (column l/4, rows 2(l%4) and 2(l%4)+1).
          const int r = lane / 4, c = 2 * (lane % 4);
          const uint16_t lo = trans ? m[static_cast<size_t>(i * 64 + c * 8 + r)] : m[static_cast<size_t>(i * 64 + r * 8 + c)];
          const uint16_t hi =
              trans ? m[static_cast<size_t>(i * 64 + (c + 1) * 8 + r)] : m[static_cast<size_t>(i * 64 + r * 8 + c + 1)];
          EXPECT_EQ(got[static_cast<size_t>(lane * 4 + i)], static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16)
              << "x" << count << (trans ? ".trans" : "") << " lane " << lane << " register " << i;
        }
    }
  }
}

// ---- mma.sync m16n8k16 ----------------------------------------------------------------------------
// Fragments built in registers from the PTX ISA's rules (groupID g = lane / 4, t = lane % 4), not
// from ldmatrix, so that the two layouts are checked independently.
__global__ void mma_kernel(float* D, const uint16_t* A, const uint16_t* B, const float* C) {
  const int lane = static_cast<int>(threadIdx.x), g = lane / 4, t = lane % 4;
  auto pack = [](uint16_t lo, uint16_t hi) { return static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16; };
  auto a = [&](int r, int c) { return A[r * 16 + c]; };  // A 16 x 16 row-major
  auto b = [&](int k, int n) { return B[k * 8 + n]; };   // B 16 x 8 row-major
  const uint32_t fa[4] = {pack(a(g, 2 * t), a(g, 2 * t + 1)), pack(a(g + 8, 2 * t), a(g + 8, 2 * t + 1)),
                          pack(a(g, 2 * t + 8), a(g, 2 * t + 9)), pack(a(g + 8, 2 * t + 8), a(g + 8, 2 * t + 9))};
  const uint32_t b0 = pack(b(2 * t, g), b(2 * t + 1, g)), b1 = pack(b(2 * t + 8, g), b(2 * t + 9, g));
  const float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
  float d[4];
  dj::emu::mma_m16n8k16_bf16(d, fa, b0, b1, c, __FILE__, __LINE__);
  D[g * 8 + 2 * t] = d[0];
  D[g * 8 + 2 * t + 1] = d[1];
  D[(g + 8) * 8 + 2 * t] = d[2];
  D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

TEST(Mma, M16n8k16Bf16MatchesANaiveProduct) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<uint16_t> A(256), B(128);
  std::vector<float> C(128), Af(256), Bf(128);
  for (size_t i = 0; i < A.size(); ++i) {
    A[i] = bits(__float2bfloat16_rn(normal(rng)));
    Af[i] = __bfloat162float(__nv_bfloat16(dj_emu_bf16_from_bits(A[i])));
  }
  for (size_t i = 0; i < B.size(); ++i) {
    B[i] = bits(__float2bfloat16_rn(normal(rng)));
    Bf[i] = __bfloat162float(dj_emu_bf16_from_bits(B[i]));
  }
  for (float& c : C) c = normal(rng);
  Device<uint16_t> dA(A), dB(B);
  Device<float> dC(C), dD(std::vector<float>(128, 0.0f));
  dj::cuda::launch("mma_kernel", mma_kernel, 1, 32, 0, nullptr, dD.get(), dA.get(), dB.get(), dC.get());
  const std::vector<float> D = dD.download();
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      double expected = C[static_cast<size_t>(i * 8 + j)];
      for (int k = 0; k < 16; ++k) expected += double(Af[static_cast<size_t>(i * 16 + k)]) * Bf[static_cast<size_t>(k * 8 + j)];
      EXPECT_NEAR(D[static_cast<size_t>(i * 8 + j)], expected, 1e-5 * (1 + std::fabs(expected))) << i << "," << j;
    }
}

// ---- shuffles and votes -------------------------------------------------------------------------------
__global__ void shuffle_kernel(int* out) {
  const int lane = static_cast<int>(threadIdx.x);
  const int v = 100 + lane;
  out[0 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[1 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3);
  out[2 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 2, 16);
  out[3 * 32 + lane] = __shfl_sync(0xffffffffu, v, 7, 8);
  out[4 * 32 + lane] = static_cast<int>(__ballot_sync(0xffffffffu, lane % 3 == 0));
  out[5 * 32 + lane] = __any_sync(0xffffffffu, lane == 17);
  out[6 * 32 + lane] = __all_sync(0xffffffffu, lane < 31);
  const double d = __shfl_xor_sync(0xffffffffu, 0.5 * lane, 16);
  out[7 * 32 + lane] = static_cast<int>(2 * d);
}

TEST(Shuffle, XorDownUpIndexAndVotes) {
  Device<int> out(std::vector<int>(8 * 32, -1));
  dj::cuda::launch("shuffle_kernel", shuffle_kernel, 1, 32, 0, nullptr, out.get());
  const std::vector<int> got = out.download();
  unsigned ballot = 0;
  for (int l = 0; l < 32; l += 3) ballot |= 1u << l;
  for (int l = 0; l < 32; ++l) {
    EXPECT_EQ(got[static_cast<size_t>(l)], 100 + (l ^ 5));
    EXPECT_EQ(got[static_cast<size_t>(32 + l)], 100 + (l + 3 < 32 ? l + 3 : l));
    EXPECT_EQ(got[static_cast<size_t>(64 + l)], 100 + (l % 16 >= 2 ? l - 2 : l));
    EXPECT_EQ(got[static_cast<size_t>(96 + l)], 100 + (l / 8) * 8 + 7);
    EXPECT_EQ(static_cast<unsigned>(got[static_cast<size_t>(128 + l)]), ballot);
    EXPECT_EQ(got[static_cast<size_t>(160 + l)], 1);
    EXPECT_EQ(got[static_cast<size_t>(192 + l)], 0);
    EXPECT_EQ(got[static_cast<size_t>(224 + l)], l ^ 16);
  }
}

// A block-wide reduction with barriers and shuffles over 8 warps.
__global__ void block_sum_kernel(float* out, const float* in) {
  __shared__ float partial[32];
  float v = in[blockIdx.x * blockDim.x + threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    float total = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) total += partial[w];
    out[blockIdx.x] = total;
  }
}

TEST(Shuffle, BlockReductionOverManyBlocks) {
  std::vector<float> in(64 * 256);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i % 7);
  Device<float> din(in), dout(std::vector<float>(64, 0.0f));
  dj::cuda::launch("block_sum_kernel", block_sum_kernel, 64, 256, 0, nullptr, dout.get(), din.get());
  const std::vector<float> got = dout.download();
  for (size_t b = 0; b < 64; ++b) {
    float expected = 0;
    for (size_t i = 0; i < 256; ++i) expected += in[b * 256 + i];
    EXPECT_EQ(got[b], expected);
  }
}

// ---- scheduling: a missing __syncwarp / __syncthreads shows for some seed ------------------------------
// Every thread writes its slot, then reads its neighbour's: lane l of warp w reads the slot of
// lane 31 - l (same warp), or of warp (w + 1) % 8 (another warp). Dynamic shared memory: it starts
// poisoned in every block (static __shared__ would keep the previous launch's values).
__global__ void neighbour_kernel(int* out, bool across_warps, bool synchronised) {
  DJ_DYNAMIC_SHARED(smem);
  int* slot = reinterpret_cast<int*>(smem);
  const int t = static_cast<int>(threadIdx.x), lane = t % 32, warp = t / 32;
  slot[t] = t;
  if (synchronised) {
    if (across_warps)
      __syncthreads();
    else
      __syncwarp();
  }
  const int other = across_warps ? ((warp + 1) % 8) * 32 + lane : warp * 32 + 31 - lane;
  out[t] = slot[other] == other ? 1 : 0;
  if (synchronised && across_warps) __syncthreads();  // nobody rewrites a slot before all have read
}

bool neighbours_seen(bool across_warps, bool synchronised, uint64_t seed) {
  Device<int> out(std::vector<int>(256, 0));
  dj::emu::reseed_device(0, seed);
  dj::cuda::launch("neighbour_kernel", neighbour_kernel, 1, 256, 256 * sizeof(int), nullptr, out.get(), across_warps,
                   synchronised);
  for (int v : out.download())
    if (v != 1) return false;
  return true;
}

TEST(Scheduling, MissingBarriersShowForSomeSeed) {
  for (const bool across_warps : {false, true}) {
    int wrong = 0;
    for (uint64_t seed = 0; seed < 16; ++seed) {
      if (!neighbours_seen(across_warps, false, seed)) ++wrong;
      EXPECT_TRUE(neighbours_seen(across_warps, true, seed)) << "seed " << seed;
    }
    EXPECT_GT(wrong, 0) << (across_warps ? "__syncthreads" : "__syncwarp");
  }
}

// ---- cp.async: the bytes land at the wait that covers their group ------------------------------------
__global__ void cp_async_kernel(float* out, const float* in) {
  DJ_DYNAMIC_SHARED(smem);
  auto* s = reinterpret_cast<float*>(smem);
  const int t = static_cast<int>(threadIdx.x);
  dj::emu::cp_async(s + 4 * t, in + 4 * t, 16, 16);  // group 0
  dj::emu::cp_async_commit();
  dj::emu::cp_async(s + 128 + 4 * t, in + 128 + 4 * t, 16, 8);  // group 1: 8 bytes copied, 8 zeroed
  dj::emu::cp_async_commit();
  out[t] = s[4 * t];  // nothing landed yet: the poison
  dj::emu::cp_async_wait_group(1);
  out[32 + t] = s[4 * t];          // group 0 landed
  out[64 + t] = s[128 + 4 * t];    // group 1 not yet
  dj::emu::cp_async_wait_all();
  out[96 + t] = s[128 + 4 * t];    // group 1 landed
  out[128 + t] = s[128 + 4 * t + 3];  // zero-filled past the source size
}

TEST(CpAsync, LandsOnlyAtTheWaitCoveringItsGroup) {
  std::vector<float> in(256);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<float>(i + 1);
  Device<float> din(in), dout(std::vector<float>(160, 0.0f));
  dj::cuda::launch("cp_async_kernel", cp_async_kernel, 1, 32, 1024, nullptr, dout.get(), din.get());
  const std::vector<float> got = dout.download();
  for (int t = 0; t < 32; ++t) {
    EXPECT_TRUE(std::isnan(got[static_cast<size_t>(t)])) << t;
    EXPECT_EQ(got[static_cast<size_t>(32 + t)], in[static_cast<size_t>(4 * t)]);
    EXPECT_TRUE(std::isnan(got[static_cast<size_t>(64 + t)])) << t;
    EXPECT_EQ(got[static_cast<size_t>(96 + t)], in[static_cast<size_t>(128 + 4 * t)]);
    EXPECT_EQ(got[static_cast<size_t>(128 + t)], 0.0f);
  }
}

// ---- reported errors ------------------------------------------------------------------------------------
__global__ void divergent_barrier_kernel(int* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

__global__ void lane_outside_mask_kernel(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void different_shuffles_kernel(int* out) {
  int v = static_cast<int>(threadIdx.x);
  if (threadIdx.x < 16)
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  else
    v = __shfl_xor_sync(0xffffffffu, v, 2);
  out[threadIdx.x] = v;
}

__global__ void exited_lane_kernel(int* out) {
  if (threadIdx.x == 3) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

// Lane 40 goes to the barrier while the rest of its warp waits for it in a shuffle.
__global__ void warp_op_and_barrier_kernel(int* out) {
  if (threadIdx.x >= 32 && threadIdx.x != 40)
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
  __syncthreads();
}

template <typename Kernel>
void run_one_block(const char* name, Kernel* kernel, int threads) {
  Device<int> out(std::vector<int>(static_cast<size_t>(threads), 0));
  dj::cuda::launch(name, kernel, 1, threads, 0, nullptr, out.get());
  cudaDeviceSynchronize();
}

TEST(Errors, DivergentBarrierIsFatalAndNamesTheKernel) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_one_block("divergent_barrier_kernel", divergent_barrier_kernel, 64),
               "kernel divergent_barrier_kernel: divergent __syncthreads");
}

TEST(Errors, LaneOutsideTheMaskIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_one_block("lane_outside_mask_kernel", lane_outside_mask_kernel, 32),
               "kernel lane_outside_mask_kernel: __shfl_xor_sync .* not in the mask");
}

TEST(Errors, LanesAtDifferentShufflesAreFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_one_block("different_shuffles_kernel", different_shuffles_kernel, 32),
               "kernel different_shuffles_kernel: warp-synchronous mismatch");
}

TEST(Errors, ExitedLaneNamedInTheMaskIsFatal) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_one_block("exited_lane_kernel", exited_lane_kernel, 32), "kernel exited_lane_kernel: .*exited");
}

TEST(Errors, BarrierAgainstWarpOperationIsADeadlock) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(run_one_block("warp_op_and_barrier_kernel", warp_op_and_barrier_kernel, 64),
               "kernel warp_op_and_barrier_kernel: block \\(0, 0, 0\\) cannot continue");
}

}  // namespace
