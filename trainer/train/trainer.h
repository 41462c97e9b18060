// The training loop: AdamW fine-tuning of a GPT-NeoX model (softmax or DiJiang attention) on a
// token stream, with gradient accumulation, clipping, Pythia's schedule, non-finite-step skipping,
// atomic checkpoints that resume bit for bit, metrics.jsonl and loss / learning-rate plots.
#pragma once
#include <cstdint>
#include <filesystem>

#include "comm/communicator.h"
#include "trainer/config/experiment.h"
#include "trainer/train/run_directory.h"  // latest_checkpoint, resume_checkpoint

namespace dj {

struct TrainOutcome {
  int64_t step = 0;         // steps completed
  double last_loss = 0.0;   // mean training loss of the last step
  bool interrupted = false; // stopped by SIGINT/SIGTERM (after writing a checkpoint)
  std::filesystem::path checkpoint;  // the last checkpoint written
};

// Checkpoints of one process are `<out_dir>/ckpt-<step>.h5`: the model tensors, the AdamW moments
// (`optimizer.m.<name>`, `optimizer.v.<name>`), and metadata with the step, the data cursor and
// the resolved experiment. Several ranks write `<out_dir>/ckpt-<step>/`, a flat checkpoint with
// one file per rank (flat_checkpoint.h). `resume` continues from the newest intact one in
// out_dir (resume_checkpoint), on any number of ranks. `stop_after` > 0 ends this run (with a checkpoint) after that many steps, for
// jobs with a time limit. `comm` is the job's communicator (null: this process alone); every rank
// calls train() with the same experiment.
TrainOutcome train(const Experiment& experiment, bool resume, int64_t stop_after = 0,
                   comm::Communicator* comm = nullptr);

}  // namespace dj
