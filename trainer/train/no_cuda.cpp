// The device probe and the GPU entry points of trainer/train/gpu.h in builds without the CUDA
// backend. The probe finds no device, so the backend selection (kernels/backend.h) never picks the
// GPU and these entry points are reached only by a caller that skipped it.
#include "kernels/core/error.h"
#include "kernels/cuda/device.h"
#include "trainer/train/gpu.h"

namespace dj::cuda {

DeviceProbe probe_devices() {
  DeviceProbe probe;
  probe.error = "this build of dijiang has no CUDA backend";
  return probe;
}

}  // namespace dj::cuda

namespace dj::gpu {

std::unique_ptr<TrainingState> make_training_state(const ModelConfig&, int, Precision, comm::Communicator&,
                                                   int64_t, const std::string&) {
  fail("this build of dijiang has no CUDA backend");
}

DeviceMemory device_memory() { fail("this build of dijiang has no CUDA backend"); }

EvalResult evaluate(ModelSource, const std::vector<int32_t>&, int64_t, int64_t, Precision) {
  fail("this build of dijiang has no CUDA backend");
}

std::unique_ptr<Decoder> make_decoder(ModelSource, Precision) {
  fail("this build of dijiang has no CUDA backend");
}

}  // namespace dj::gpu
