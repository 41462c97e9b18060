// The device probe and the GPU entry points of trainer/train/gpu.h in builds without the CUDA
// backend. The probe finds no device, so the backend selection (kernels/backend.h) never picks the
// GPU and these entry points are reached only by a caller that skipped it.
//
// Every definition is qualified (gpu::..., cuda::...): a qualified definition must match a
// declaration, so when a signature in gpu.h or device.h changes this file stops compiling in every
// build (it is compiled even where CUDA is found) instead of defining a new overload that only a
// build without CUDA would fail to link.
#include "kernels/core/error.h"
#include "kernels/cuda/device.h"
#include "trainer/train/gpu.h"

namespace dj {

cuda::DeviceProbe cuda::probe_devices() {
  DeviceProbe probe;
  probe.error = "this build of dijiang has no CUDA backend";
  return probe;
}

std::unique_ptr<TrainingState> gpu::make_training_state(const ModelConfig&, int, Precision, comm::Communicator&,
                                                        int64_t, const std::string&) {
  fail("this build of dijiang has no CUDA backend");
}

gpu::DeviceMemory gpu::device_memory() { fail("this build of dijiang has no CUDA backend"); }

EvalResult gpu::evaluate(ModelSource, const std::vector<int32_t>&, int64_t, int64_t, Precision) {
  fail("this build of dijiang has no CUDA backend");
}

std::unique_ptr<Decoder> gpu::make_decoder(ModelSource, Precision) {
  fail("this build of dijiang has no CUDA backend");
}

}  // namespace dj
