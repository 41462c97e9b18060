// Fresh GPT-NeoX weights, initialised as GPT-NeoX initialises Pythia: "small_init"
// N(0, sqrt(2 / (5 D))) for embeddings and input projections, "wang_init" N(0, 2 / (L sqrt(D)))
// for the projections that write into the residual stream (attention.dense, mlp.dense_4h_to_h),
// LayerNorm weights 1, biases 0. Deterministic for a seed on every platform.
#pragma once
#include <cstdint>

#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"
#include "trainer/model/config.h"

namespace dj {

// The softmax GPT-NeoX tensors of `config` (F32). DiJiang tensors are added by conversion.
TensorMap initial_tensors(const ModelConfig& config, uint64_t seed);

// The same distributions as a plan (F32), each tensor drawn from its own stream of `seed` when a
// writer reaches it, so that a model of any size is made one tensor at a time. The values differ
// from initial_tensors' (which draws every tensor from one stream in layout order).
TensorPlan random_tensor_plan(const ModelConfig& config, uint64_t seed);

}  // namespace dj
