// What a training run reports about its resources: resident memory of the process, and at the end
// the per-rank table of state memory, peak RSS, the memory plan and communication per step.
#pragma once
#include <cstdint>

#include "comm/communicator.h"
#include "trainer/config/experiment.h"
#include "trainer/model/config.h"
#include "trainer/train/training_state.h"

namespace dj {

// Resident bytes of this process now (/proc/self/statm), and its peak since the last reset
// (VmHWM; reset by writing 5 to /proc/self/clear_refs). 0 where /proc does not say.
int64_t resident_bytes();
int64_t peak_resident_bytes();
void reset_peak_resident();

struct RunResources {
  const Experiment& experiment;
  const ModelConfig& config;
  int rank = 0, world = 1;
  bool on_gpu = false;
  int64_t steps = 1;                 // steps this process trained (at least 1)
  int64_t rss_outside_state = 0;     // resident bytes outside the state when training began
  comm::Traffic validation_traffic;  // collectives of validation, left out of the per-step figures
  int64_t source_bytes_read = 0;     // bytes of the model or checkpoint read to start
  int64_t start_peak = 0;            // resident peak once the state was loaded (before training)
};

// Per rank: the peak bytes of parameters, gradients and optimizer state the sharded state held,
// the peak resident memory of the process, the memory plan, and the communication of an average
// step. Every rank calls it (one all-reduce); rank 0 logs the table and writes resources.json in
// the run directory.
void report_run_resources(TrainingState& state, comm::Communicator& comm, const RunResources& run);

}  // namespace dj
