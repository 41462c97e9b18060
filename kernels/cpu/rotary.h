// Partial rotary position embedding (GPT-NeoX): rotates the first rotary_dims of each head
// vector, pairing dimension i with i + rotary_dims/2 (docs/pythia.md, section 2 step 3).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

namespace dj::cpu {

// x: [BH, T, d], rotated in place; token t of every row sits at position position_offset + t.
// inv_freq[i] = base^(-2i/rotary_dims); angles are formed in double precision.
template <typename T>
void rotary_forward(T* x, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
                    int64_t position_offset = 0);

// The adjoint of the rotation (rotation by the negative angle), in place on the gradient.
template <typename T>
void rotary_backward(T* dx, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
                     int64_t position_offset = 0);

// cos and sin of p * inv_freq[i] for positions p in [0, positions) and i in [0, rotary_dims/2),
// row-major [positions, rotary_dims/2], in double.
struct RotaryTable {
  int64_t rotary_dims = 0;
  double base = 0.0;
  int64_t positions = 0;
  std::vector<double> cos, sin;
};

// A table covering at least `positions` positions for (rotary_dims, base). Tables are computed
// once and shared by later calls (the rotations of every layer, forward and backward, use the
// same one); a longer sequence or a later position offset replaces the table with a longer one.
// Each entry is the same whichever table holds it, so results do not depend on the cache.
// Thread-safe; the table stays valid while the returned pointer is held.
std::shared_ptr<const RotaryTable> rotary_table(int64_t rotary_dims, double base, int64_t positions);

// A table computed afresh, bypassing the cache (tests compare the two).
std::shared_ptr<const RotaryTable> compute_rotary_table(int64_t rotary_dims, double base, int64_t positions);

}  // namespace dj::cpu
