// The GPU side of the trainer and of evaluation, behind a header free of CUDA: defined by
// trainer/train/cuda_training.cpp in builds with the CUDA backend (compiled against the CUDA
// runtime, or against the emulation of tests/cuda_emulation), and by no_cuda.cpp otherwise, whose
// functions say that this build has no CUDA backend.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "trainer/config/choices.h"
#include "trainer/model/config.h"
#include "trainer/model/decoder.h"
#include "trainer/model/evaluate.h"
#include "trainer/model/source.h"
#include "trainer/train/training_state.h"

namespace dj::gpu {

// The model and its ZeRO state of `stage` on this rank's GPU (device local rank mod devices on the
// node), in `precision` bf16 or f32. Alone (host.size() == 1) the collectives of one rank run
// through an NCCL communicator of one rank; with several ranks the NCCL communicator is
// bootstrapped over `host`, which must outlive the state. `planned_bytes` (memory_plan.h) is
// checked against the device's free memory before anything is allocated; `plan` is the table that
// explains a refusal.
std::unique_ptr<TrainingState> make_training_state(const ModelConfig& config, int stage, Precision precision,
                                                   comm::Communicator& host, int64_t planned_bytes = 0,
                                                   const std::string& plan = "");

// Free and total bytes of device 0 (cudaMemGetInfo).
struct DeviceMemory {
  int64_t free = 0, total = 0;
};
DeviceMemory device_memory();

// Windowed evaluation (evaluate_windows) of `source` on device 0 in `precision` f32 or bf16;
// the source's tensors are released once the model holds them.
EvalResult evaluate(ModelSource source, const std::vector<int32_t>& ids, int64_t seq_len, int64_t batch,
                    Precision precision);

// A decoder (generate, eval-tasks) of `source` on device 0 in `precision` f32 or bf16; the
// source's tensors are released once the model holds them.
std::unique_ptr<Decoder> make_decoder(ModelSource source, Precision precision);

}  // namespace dj::gpu
