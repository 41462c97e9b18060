// The arithmetic of the emulated warp operations (warp_math.h).
#include "warp_math.h"

#include <cstring>

namespace dj::emu {

int shuffle_source(int lane, int kind, int arg, int width) {
  const int base = lane & ~(width - 1);
  switch (kind) {
    case 0: return base + (arg & (width - 1));
    case 1: return lane - arg >= base ? lane - arg : lane;
    case 2: return lane + arg < base + width ? lane + arg : lane;
    default: {
      const int src = lane ^ arg;
      return src < base + width ? src : lane;  // later groups are out of reach: own value
    }
  }
}

void ldmatrix_lanes(LaneSlot* const lanes[32], unsigned mask, int count, bool trans) {
  uint16_t m[4][8][8];
  for (int i = 0; i < count; ++i)
    for (int row = 0; row < 8; ++row) {
      const auto* p = static_cast<const unsigned char*>(lanes[8 * i + row]->address);
      std::memcpy(m[i][row], p, 16);
    }
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) == 0) continue;
    const int group = lane >> 2, pair = 2 * (lane & 3);
    LaneSlot& s = *lanes[lane];
    for (int i = 0; i < count; ++i) {
      // Without .trans lane l holds row l/4, columns 2(l%4) and 2(l%4)+1; with .trans the matrix
      // is read column-major: rows 2(l%4) and 2(l%4)+1 of column l/4.
      const uint16_t lo = trans ? m[i][pair][group] : m[i][group][pair];
      const uint16_t hi = trans ? m[i][pair + 1][group] : m[i][group][pair + 1];
      s.r[i] = static_cast<uint32_t>(lo) | static_cast<uint32_t>(hi) << 16;
    }
  }
}

namespace {

float bf16_value(uint32_t bits16) {
  const uint32_t u = bits16 << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

}  // namespace

// Fragments as the PTX ISA lays them out: groupID g = lane >> 2, t = lane % 4;
//   A (16 x 16): a[0] = (g, 2t..2t+1), a[1] = (g+8, 2t..2t+1), a[2] = (g, 2t+8..2t+9), a[3] = (g+8, 2t+8..2t+9)
//   B (16 x 8):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g)
//   C, D (16 x 8): c0, c1 = (g, 2t..2t+1), c2, c3 = (g+8, 2t..2t+1)
// (the lower half of each 32-bit register is the first element). Products of bf16 values are exact
// in fp32; they are accumulated onto C in fp32, in k order.
void mma_lanes(LaneSlot* const lanes[32]) {
  float A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    const LaneSlot& s = *lanes[lane];
    const int g = lane >> 2, t = 2 * (lane & 3);
    for (int h = 0; h < 2; ++h) {
      A[g][t + h] = bf16_value(s.a[0] >> (16 * h) & 0xffffu);
      A[g + 8][t + h] = bf16_value(s.a[1] >> (16 * h) & 0xffffu);
      A[g][t + 8 + h] = bf16_value(s.a[2] >> (16 * h) & 0xffffu);
      A[g + 8][t + 8 + h] = bf16_value(s.a[3] >> (16 * h) & 0xffffu);
      B[t + h][g] = bf16_value(s.b[0] >> (16 * h) & 0xffffu);
      B[t + 8 + h][g] = bf16_value(s.b[1] >> (16 * h) & 0xffffu);
      C[g][t + h] = s.c[h];
      C[g + 8][t + h] = s.c[2 + h];
    }
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j) {
      float acc = C[i][j];
      for (int k = 0; k < 16; ++k) acc += A[i][k] * B[k][j];
      C[i][j] = acc;
    }
  for (int lane = 0; lane < 32; ++lane) {
    LaneSlot& s = *lanes[lane];
    const int g = lane >> 2, t = 2 * (lane & 3);
    s.d[0] = C[g][t];
    s.d[1] = C[g][t + 1];
    s.d[2] = C[g + 8][t];
    s.d[3] = C[g + 8][t + 1];
  }
}

}  // namespace dj::emu
