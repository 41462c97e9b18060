// Partial rotary position embedding (GPT-NeoX): rotates the first rotary_dims of each head
// vector, pairing dimension i with i + rotary_dims/2 (docs/pythia.md, section 2 step 3).
#pragma once
#include <cstdint>

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

}  // namespace dj::cpu
