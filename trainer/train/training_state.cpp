#include "trainer/train/training_state.h"

#include "kernels/backend.h"
#include "trainer/train/sharded_training.h"

namespace dj {

std::unique_ptr<TrainingState> make_cpu_training_state(const ModelConfig& config, int stage,
                                                       comm::Communicator& host) {
  return std::make_unique<ShardedTraining<CpuOps<float>>>(config, stage, host, CpuOps<float>(),
                                                          cpu_description());
}

}  // namespace dj
