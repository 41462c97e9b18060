// One optimizer step of a data-parallel run, as the training loop takes it (and the device checks
// repeat it): this rank's slice of the global batch in micro-batches, the gradient reduction, the
// global-norm clip and AdamW. Every rank calls it with the same global batch and step.
#pragma once
#include <cstdint>

#include "comm/communicator.h"
#include "trainer/optim/adamw.h"
#include "trainer/train/training_state.h"

namespace dj {

struct StepInput {
  const int32_t* ids = nullptr;  // this rank's `local` sequences of `tokens` ids (host memory)
  int64_t local = 0;             // sequences of this rank (0 allowed: padding passes only)
  int64_t global = 1;            // sequences of the whole step over every rank
  int64_t tokens = 0;            // ids per sequence
  int64_t micro_batches = 1;     // passes every rank runs (the largest slice's count)
  int64_t step = 1;              // the 1-based step AdamW's bias correction uses
  double lr = 0.0, grad_clip = 0.0;  // grad_clip <= 0: no clipping
  AdamWConfig adamw;
  double vote = 0.0;             // summed over the ranks with the loss (the stop request)
};

struct StepOutcome {
  double loss = 0.0;   // the global batch's mean loss
  double norm = 0.0;   // the gradient's global norm before clipping
  double votes = 0.0;  // the sum of every rank's vote
  bool updated = false;  // false: a non-finite loss or norm, and no update
};

// The gradient of the global mean loss: each micro-batch's mean weighted by its share of the
// global batch, so N ranks compute what one process does, up to the order of sums.
StepOutcome training_step(TrainingState& state, comm::Communicator& host, const StepInput& in);

}  // namespace dj
