// The emulation's settings these tests rely on, set before any test touches the emulation (it reads
// them once, at its first use): two devices (multi-device launches, NCCL ranks as threads), 4 GB
// each (allocation failures) and NCCL timeouts of 2 s (a peer that never arrives).
#include <cstdlib>

namespace {

const bool kSettings = [] {
  setenv("DIJIANG_EMU_DEVICES", "2", 1);
  setenv("DIJIANG_EMU_MEMORY_GB", "4", 1);
  setenv("DIJIANG_EMU_NCCL_TIMEOUT_S", "2", 1);
  return true;
}();

}  // namespace
