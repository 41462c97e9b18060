// YAML experiments: the schema, strict validation and command-line overrides.
//
// Every key has a type and a default; an unknown key or a wrong type is an error naming the file,
// the line and (for unknown keys) the closest valid key. Overrides `a.b=c` are applied before
// validation, with the same checks. The resolved experiment (every key, defaults filled in) is what
// gets printed at start and stored in checkpoints.
#pragma once
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "trainer/config/choices.h"
#include "trainer/model/config.h"

namespace dj {

// One stage of a run (`stages:` in the YAML): its own steps, learning-rate schedule (warm-up and
// cosine decay from lr to min_lr over the stage), loss and trained tensors. Each stage starts a
// fresh AdamW (zero moments, bias correction from its first step).
struct Stage {
  std::string name;
  StageLoss loss = StageLoss::LanguageModel;
  StageTrains train = StageTrains::All;
  int64_t steps = 0, warmup = 0;
  double lr = 0.0, min_lr = 0.0;
  // lm stages: with distill_weight > 0 the loss adds distill_weight · τ² · KL(teacher ‖ model) of
  // the next-token distributions at temperature τ, the teacher being model.source.
  double distill_weight = 0.0, temperature = 1.0;
  int64_t begin = 0;  // steps of the run before this stage
  int64_t end() const { return begin + steps; }
};

struct Experiment {
  // model
  std::string model_source;             // Hugging Face directory or native checkpoint
  // keep, softmax, or a conversion of a softmax source: dijiang, retnet, performer, cosformer or elu.
  TargetAttention attention = TargetAttention::Keep;
  DiJiangOptions dijiang;
  // Whether a softmax source is converted, and with what: DiJiang with the model.dijiang options
  // (without a feature map for retnet), or a normalised linear-attention baseline with
  // model.dijiang's seed, chunk and form (linear_options).
  bool converts_attention() const { return attention != TargetAttention::Keep && attention != TargetAttention::Softmax; }
  bool converts_to_linear() const {
    return attention == TargetAttention::Performer || attention == TargetAttention::CosFormer ||
           attention == TargetAttention::Elu;
  }
  LinearOptions linear_options() const {
    LinearOptions options;
    options.feature_map = attention == TargetAttention::Performer ? cpu::LinearFeatureMap::Performer
                          : attention == TargetAttention::CosFormer ? cpu::LinearFeatureMap::CosFormer
                                                                    : cpu::LinearFeatureMap::Elu;
    options.seed = dijiang.seed;
    options.chunk = dijiang.chunk;
    options.form = dijiang.form;
    return options;
  }
  DiJiangOptions conversion_options() const {
    DiJiangOptions options = dijiang;
    if (attention == TargetAttention::RetNet) options.projection = FeatureProjection::None;
    return options;
  }
  // data: token files (.npy arrays or indexed-dataset prefixes, see read_token_stream)
  std::string train_tokens, valid_tokens;
  int64_t seq_len = 128;
  DataOrder order = DataOrder::Shuffled;  // shuffled or pythia (see TokenBatches)
  // batch: one step uses micro_batch * grad_accum sequences (the global batch), whatever the
  // number of ranks; each rank takes a contiguous slice of it in micro-batches of micro_batch.
  int64_t micro_batch = 4, grad_accum = 1;
  int64_t global_tokens = 0;            // if set, must equal micro_batch · grad_accum · seq_len
  Precision precision = Precision::F32;  // f32 on the CPU; bf16 needs the CUDA backend
  // optimizer
  double lr = 1e-3, min_lr = 1e-4, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1, grad_clip = 1.0;
  std::vector<std::string> freeze;      // parameter-name patterns (* and ?) that do not train
  // schedule
  int64_t steps = 100, warmup = 10;
  int64_t max_bad_steps = 5;            // consecutive non-finite steps before the run stops
  // checkpoint
  std::string out_dir = "runs/train";
  int64_t checkpoint_every = 100, keep = 3;
  // logging
  int64_t log_every = 1, eval_every = 0;  // eval_every 0: validation at checkpoints only
  uint64_t seed = 1234;
  // distributed (ranks come from the launcher: mpirun or srun)
  int64_t zero_stage = 0;               // 0 data parallel, 1 + optimizer state, 2 + gradients, 3 + parameters sharded
  double timeout_s = 600.0;             // a collective that waits longer ends the job

  // The run's stages in order. Without `stages:` in the YAML there is one, "train": the language
  // model over schedule.steps with the optimizer's rates (today's form); with it, schedule.steps is
  // their sum and stage keys left out take optimizer.lr, optimizer.min_lr and schedule.warmup.
  std::vector<Stage> stages;
  bool explicit_stages = false;
  // The stage that takes the step after `done` steps (the last stage once the run is complete).
  const Stage& stage_at(int64_t done) const;
  size_t stage_index(int64_t done) const;

  int64_t sequences_per_step() const { return micro_batch * grad_accum; }
  int64_t tokens_per_step() const { return sequences_per_step() * seq_len; }
};

// The one stage of an experiment without `stages:`: "train", the language model over
// schedule.steps at the optimizer's rates.
Stage default_stage(const Experiment& experiment);

// Reads and validates a YAML file with overrides ("a.b=c", values parsed as YAML scalars).
Experiment load_experiment(const std::filesystem::path& file, const std::vector<std::string>& overrides);
// Every key with its type, default (or "required"), allowed values and a line of help, by section:
// what `dijiang train --list-keys` prints.
std::string experiment_keys_help();
// The resolved experiment as YAML text (every key).
std::string experiment_to_yaml(const Experiment& experiment);

// Shell-style name patterns: '*' any run of characters, '?' one character.
bool matches_pattern(std::string_view pattern, std::string_view name);

}  // namespace dj
