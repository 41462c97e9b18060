// The arithmetic of the emulated warp operations, apart from their scheduling (block.cpp): which
// lane a shuffle reads, how ldmatrix distributes 8 x 8 matrices over the lanes, and mma.sync's
// m16n8k16 bf16 product. Each works on the 32 lanes' operand slots of one warp.
#pragma once
#include <cstdint>

namespace dj::emu {

// One lane's operands and results of a warp operation.
struct LaneSlot {
  uint64_t in = 0, out = 0;
  int arg = 0, width = 32, predicate = 0;
  const void* address = nullptr;
  uint32_t a[4] = {}, b[2] = {}, r[4] = {};
  float c[4] = {}, d[4] = {};
};

// The lane a shuffle of `kind` (0 idx, 1 up, 2 down, 3 xor) with `arg` and `width` reads for `lane`.
int shuffle_source(int lane, int kind, int arg, int width);

// ldmatrix .x`count` (.trans when `trans`): reads the rows at the addresses of lanes 8i .. 8i + 7 and
// fills r[0 .. count) of every lane in `mask`.
void ldmatrix_lanes(LaneSlot* const lanes[32], unsigned mask, int count, bool trans);

// mma.sync m16n8k16 .row.col f32.bf16.bf16.f32 over the fragments in a, b, c of the 32 lanes; writes d.
void mma_lanes(LaneSlot* const lanes[32]);

}  // namespace dj::emu
