// Will it fit? The memory one rank of a training run holds, from the model config and the
// experiment alone: nothing is allocated. The formulas are those of the allocations themselves
// (ShardedState for the state, GPTNeoXModel for the activations, the backend's workspaces), so
// the state part equals what ShardedState::peak_memory() reports; `dijiang train --plan` prints
// it for every ZeRO stage, and a run on a GPU checks it against the device's free memory before
// it allocates anything.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config/experiment.h"
#include "trainer/model/config.h"

namespace dj {

struct MemoryPlanInput {
  ModelConfig config;          // the model as trained (after a DiJiang conversion)
  int ranks = 1;
  int stage = 0;
  bool gpu = false;            // the device layout (fp32 masters; a bf16 copy with precision bf16)
  Precision precision = Precision::F32;
  int64_t micro_batch = 1;     // sequences per micro-batch
  int64_t seq_len = 128;       // tokens per training sequence
  int64_t global_batch = 1;    // sequences per step (micro_batch · grad_accum)
  bool validation = true;      // the run evaluates windows of seq_len + 1 tokens (eval_every or checkpoints)
};

// Bytes one rank holds at its peak, by kind.
struct RankMemory {
  int64_t parameters = 0;   // fp32 masters (the slice, and the gathered segments at stage 3)
  int64_t compute_copy = 0; // bf16 parameters the products read (bf16 on a GPU only)
  int64_t gradients = 0;    // fp32 gradients (full, slice, segment buffers)
  int64_t optimizer = 0;    // AdamW m and v and the update masks
  int64_t activations = 0;  // what a training micro-batch keeps for its backward, and validation's
  int64_t workspace = 0;    // backend scratch: cuBLASLt workspace, cross-entropy rows, tables
  int64_t state() const { return parameters + compute_copy + gradients + optimizer; }
  int64_t total() const { return state() + activations + workspace; }
};

// The plan of one rank (ranks differ by the rounding of their slices).
RankMemory plan_rank_memory(const MemoryPlanInput& input, int rank);
// The largest over the ranks.
RankMemory plan_memory(const MemoryPlanInput& input);

// The input of an experiment for a model config on `ranks` ranks at `stage`.
MemoryPlanInput plan_input(const Experiment& experiment, const ModelConfig& config, int ranks, int stage, bool gpu);

// Memory a GPU keeps beyond the plan's allocations (CUDA context, allocator rounding), held back
// when a plan is compared with a device's capacity.
int64_t gpu_memory_reserve(int64_t capacity_bytes);

// The table `dijiang train --plan` prints: every stage for `ranks` ranks, in GiB, and whether it
// fits `capacity_bytes` per rank (0: no capacity to compare with).
std::string plan_table(const Experiment& experiment, const ModelConfig& config, int ranks, bool gpu,
                       int64_t capacity_bytes);

}  // namespace dj
