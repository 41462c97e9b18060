// Controls of the CUDA emulation for its own tests (not part of the CUDA API).
#pragma once
#include <cstdint>

namespace dj::emu {

// While a device is held its worker starts no operation: a test can queue work on several
// streams and then let the worker choose among them.
void hold_device(int device, bool held);

// Reseeds the generator with which a device's worker picks among ready streams and orders the
// warps and lanes of each block (initially from DIJIANG_EMU_SEED). Call it while the device is idle.
void reseed_device(int device, uint64_t seed);

}  // namespace dj::emu
