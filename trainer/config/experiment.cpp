#include "trainer/config/experiment.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <optional>
#include <sstream>

#include "kernels/core/error.h"

namespace dj {

namespace {

enum class Kind { String, Int, UInt, Float, Bool, StringList, Choice };

// One YAML key: its dotted path, type, where it lives in Experiment, a one-line help and, for a
// choice, its spellings (an enumeration of trainer/config/choices.h, converted when the file is read).
struct Key {
  std::string path;
  Kind kind;
  std::function<void*(Experiment&)> field;
  std::string help;
  bool required = false;
  std::vector<std::string> choices;                                  // Kind::Choice: the allowed spellings
  std::function<bool(Experiment&, std::string_view)> set_choice;     // false: not one of them
  std::function<std::string(const Experiment&)> choice_of;           // the spelling of the current value
};

template <class T>
Key plain(std::string path, Kind kind, T Experiment::*member, std::string help, bool required = false) {
  return {std::move(path), kind, [member](Experiment& e) -> void* { return &(e.*member); }, std::move(help), required};
}

template <class T>
Key dijiang_key(std::string path, Kind kind, T DiJiangOptions::*member, std::string help) {
  return {std::move(path), kind, [member](Experiment& e) -> void* { return &(e.dijiang.*member); }, std::move(help)};
}

// A choice key over enumeration E, limited to `allowed` spellings when given.
template <class E>
Key choice(std::string path, std::function<E&(Experiment&)> field, std::string help,
           std::vector<std::string> allowed = {}) {
  if (allowed.empty())
    for (const auto& [value, name] : Choices<E>::values) allowed.emplace_back(name);
  Key key{std::move(path), Kind::Choice, [field](Experiment& e) -> void* { return &field(e); }, std::move(help)};
  key.choices = allowed;
  key.set_choice = [field, allowed](Experiment& e, std::string_view name) {
    if (std::find(allowed.begin(), allowed.end(), name) == allowed.end()) return false;
    field(e) = *find_choice<E>(name);
    return true;
  };
  key.choice_of = [field](const Experiment& e) {
    return std::string(choice_name(field(const_cast<Experiment&>(e))));
  };
  return key;
}

const std::vector<Key>& schema() {
  using E = Experiment;
  using D = DiJiangOptions;
  static const std::vector<Key> keys = {
      plain("model.source", Kind::String, &E::model_source,
            "the model to start from: a Hugging Face directory (config.json with safetensors or pytorch_model.bin), "
            "a native checkpoint (.h5 or a shard directory), a flat checkpoint directory, or a GPT-NeoX config.json "
            "to train from freshly initialised weights",
            true),
      choice<TargetAttention>("model.attention", [](E& e) -> TargetAttention& { return e.attention; },
                              "keep the source's attention, require softmax, or convert softmax attention to DiJiang "
                              "(docs/method.md), to RetNet-style retention (DiJiang without its feature map) or to a "
                              "normalised linear-attention baseline: performer (FAVOR+), cosformer or elu (elu + 1 "
                              "features), which take model.dijiang's seed, chunk and form"),
      dijiang_key("model.dijiang.seed", Kind::UInt, &D::seed,
                  "seeds the sampling of the feature frequencies t and the initialisation of the gate W_G"),
      choice<FeatureSampling>("model.dijiang.sampling", [](E& e) -> FeatureSampling& { return e.dijiang.sampling; },
                              "frequencies t: qmc, stratified quantiles of N(0, 1) (the paper's); mc, plain normal "
                              "draws (the reference code's)"),
      choice<FeatureProjection>("model.dijiang.projection",
                                [](E& e) -> FeatureProjection& { return e.dijiang.projection; },
                                "the feature map softmax(x P): dct, P = C diag(t) (DiJiang); gaussian, a Gaussian "
                                "matrix in place of the DCT C (the ablation); none, no feature map (as retnet)"),
      dijiang_key("model.dijiang.chunk", Kind::Int, &D::chunk, "block length of the chunkwise form, in tokens"),
      choice<cpu::DecayForm>("model.dijiang.form", [](E& e) -> cpu::DecayForm& { return e.dijiang.form; },
                             "how the decayed attention is computed (the same function): parallel (quadratic, the "
                             "reference), chunkwise (linear; the GPU's) or recurrent (token by token)"),
      dijiang_key("model.dijiang.feature_weights", Kind::Bool, &D::feature_weights,
                  "learn per-head weights on the features (the paper's D) instead of fixed ones"),
      dijiang_key("model.dijiang.learnable_decay", Kind::Bool, &D::learnable_decay,
                  "train the per-head decay log γ (frozen at its initial value by default)"),
      dijiang_key("model.dijiang.group_norm_per_head", Kind::Bool, &D::group_norm_per_head,
                  "GroupNorm over one group per head instead of the reference's head_dim groups"),
      plain("data.train", Kind::String, &E::train_tokens,
            "training tokens: a 1-D .npy array of token ids or an indexed-dataset prefix (PREFIX.bin/.idx; shards "
            "comma-separated)",
            true),
      plain("data.valid", Kind::String, &E::valid_tokens,
            "validation tokens in the same forms (empty: no validation)"),
      plain("data.seq_len", Kind::Int, &E::seq_len, "tokens per training sequence"),
      choice<DataOrder>("data.order", [](E& e) -> DataOrder& { return e.order; },
                        "shuffled: random windows drawn with the seed; pythia: the stored sequences in order, as "
                        "Pythia was trained"),
      plain("batch.micro_batch", Kind::Int, &E::micro_batch, "sequences per forward and backward pass on a rank"),
      plain("batch.grad_accum", Kind::Int, &E::grad_accum,
            "micro-batches per step: a step uses micro_batch x grad_accum sequences, whatever the number of ranks"),
      plain("batch.global_tokens", Kind::Int, &E::global_tokens,
            "if set, must equal micro_batch x grad_accum x seq_len (a guard for scripts)"),
      choice<Precision>("precision", [](E& e) -> Precision& { return e.precision; },
                        "f32 everywhere; bf16 activations and products with f32 masters (needs a GPU)",
                        {"f32", "bf16"}),
      plain("optimizer.lr", Kind::Float, &E::lr, "peak learning rate of AdamW"),
      plain("optimizer.min_lr", Kind::Float, &E::min_lr, "learning rate at the end of the cosine decay"),
      plain("optimizer.beta1", Kind::Float, &E::beta1, "AdamW's first-moment decay"),
      plain("optimizer.beta2", Kind::Float, &E::beta2, "AdamW's second-moment decay"),
      plain("optimizer.eps", Kind::Float, &E::eps, "AdamW's epsilon, added to the square root of the second moment"),
      plain("optimizer.weight_decay", Kind::Float, &E::weight_decay,
            "decoupled weight decay of matrices, embeddings included (biases, norms and other 1-D tensors are not "
            "decayed)"),
      plain("optimizer.grad_clip", Kind::Float, &E::grad_clip, "global gradient-norm clip (0: none)"),
      plain("optimizer.freeze", Kind::StringList, &E::freeze,
            "parameter-name patterns (* and ?) that do not train, e.g. gpt_neox.embed_in.*"),
      plain("schedule.steps", Kind::Int, &E::steps, "optimizer steps of the run"),
      plain("schedule.warmup", Kind::Int, &E::warmup, "steps of linear warm-up before the cosine decay"),
      plain("schedule.max_bad_steps", Kind::Int, &E::max_bad_steps,
            "consecutive steps with a non-finite loss or gradient (skipped) before the run stops"),
      plain("checkpoint.dir", Kind::String, &E::out_dir, "the run directory: checkpoints, metrics and plots"),
      plain("checkpoint.every", Kind::Int, &E::checkpoint_every, "steps between checkpoints (and the last step)"),
      plain("checkpoint.keep", Kind::Int, &E::keep, "newest checkpoints kept; older ones are removed"),
      plain("logging.every", Kind::Int, &E::log_every, "steps between progress lines"),
      plain("logging.eval_every", Kind::Int, &E::eval_every,
            "steps between validation passes (0: at checkpoints only)"),
      plain("distributed.zero_stage", Kind::Int, &E::zero_stage,
            "0 data parallel; 1 + optimizer state sharded; 2 + gradients; 3 + parameters"),
      plain("distributed.timeout_s", Kind::Float, &E::timeout_s,
            "a collective that waits longer than this ends the job, naming the ranks that did not arrive"),
      plain("seed", Kind::UInt, &E::seed, "seeds the shuffled order of training windows and the weights of a model trained from a config.json"),
  };
  return keys;
}

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::String: return "a string";
    case Kind::Int: return "an integer";
    case Kind::UInt: return "a non-negative integer";
    case Kind::Float: return "a number";
    case Kind::Bool: return "true or false";
    case Kind::StringList: return "a list of strings";
    case Kind::Choice: return "one of the listed values";
  }
  return "";
}

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

std::string closest_key(const std::string& path) {
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const Key& key : schema()) {
    const size_t distance = edit_distance(path, key.path);
    if (distance < best_distance) {
      best_distance = distance;
      best = key.path;
    }
  }
  return best;
}

bool is_section(const std::string& path) {
  return std::any_of(schema().begin(), schema().end(), [&](const Key& k) { return k.path.starts_with(path + "."); });
}

const Key* find_key(const std::string& path) {
  for (const Key& key : schema())
    if (key.path == path) return &key;
  return nullptr;
}

// Where a node came from, for messages: "file.yaml:12" or "override 'a.b=c'".
std::string origin(const std::string& file, const YAML::Node& node) {
  if (node.Mark().is_null()) return file;
  return fmt::format("{}:{}", file, node.Mark().line + 1);
}

void assign(Experiment& e, const Key& key, const YAML::Node& node, const std::string& where) {
  const auto wrong = [&] {
    fail("{}: '{}' must be {}, got {}", where, key.path, kind_name(key.kind),
         node.IsScalar()     ? fmt::format("'{}'", node.Scalar())
         : node.IsNull()     ? std::string("nothing")
         : node.IsSequence() ? std::string("a list")
                             : std::string("a mapping"));
  };
  try {
    switch (key.kind) {
      case Kind::String:
        if (node.IsNull()) {  // `key:` or `key=` with nothing after it: the empty string
          *static_cast<std::string*>(key.field(e)) = "";
          break;
        }
        if (!node.IsScalar()) wrong();
        *static_cast<std::string*>(key.field(e)) = node.as<std::string>();
        break;
      case Kind::Choice:
        if (!node.IsScalar()) wrong();
        if (!key.set_choice(e, node.Scalar()))
          fail("{}: '{}' is '{}', expected one of: {}", where, key.path, node.Scalar(), fmt::join(key.choices, ", "));
        break;
      case Kind::Int:
        if (!node.IsScalar()) wrong();
        *static_cast<int64_t*>(key.field(e)) = node.as<int64_t>();
        break;
      case Kind::UInt:
        if (!node.IsScalar() || node.Scalar().starts_with("-")) wrong();
        *static_cast<uint64_t*>(key.field(e)) = node.as<uint64_t>();
        break;
      case Kind::Float:
        if (!node.IsScalar()) wrong();
        *static_cast<double*>(key.field(e)) = node.as<double>();
        break;
      case Kind::Bool:
        if (!node.IsScalar()) wrong();
        *static_cast<bool*>(key.field(e)) = node.as<bool>();
        break;
      case Kind::StringList: {
        if (!node.IsSequence()) wrong();
        auto& list = *static_cast<std::vector<std::string>*>(key.field(e));
        list.clear();
        for (const auto& item : node) {
          if (!item.IsScalar()) wrong();
          list.push_back(item.as<std::string>());
        }
        break;
      }
    }
  } catch (const YAML::BadConversion&) {
    wrong();
  }
}

void walk(const YAML::Node& node, const std::string& prefix, const std::string& file, Experiment& e,
          std::vector<std::string>& seen) {
  for (const auto& entry : node) {
    const std::string where = origin(file, entry.first);
    if (!entry.first.IsScalar())
      fail("{}: a key must be a plain name, got {}{}", where, entry.first.IsSequence() ? "a list" : "a mapping",
           prefix.empty() ? "" : fmt::format(" in '{}'", prefix));
    const std::string name = entry.first.Scalar();
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    if (const Key* key = find_key(path)) {
      assign(e, *key, entry.second, where);
      seen.push_back(path);
    } else if (is_section(path)) {
      if (!entry.second.IsMap()) fail("{}: '{}' must be a mapping of keys", where, path);
      walk(entry.second, path, file, e, seen);
    } else {
      fail("{}: unknown key '{}' (did you mean '{}'?)", where, path, closest_key(path));
    }
  }
}

// ---- stages ----------------------------------------------------------------------------------
// A `stages:` entry as written (or changed by an override stages.N.KEY=VALUE); keys left out take
// the experiment's defaults once every key is read.
struct StageSpec {
  std::optional<std::string> name;
  std::optional<StageLoss> loss;
  std::optional<StageTrains> train;
  std::optional<int64_t> steps, warmup;
  std::optional<double> lr, min_lr, distill_weight, temperature;
};

struct StageKey {
  const char* name;
  const char* type;
  const char* fallback;
  const char* help;
};

constexpr StageKey kStageKeys[] = {
    {"name", "string", "stage<N> (N from 1)",
     "stages: a list of training stages run in order, each a mapping of these keys (as overrides: stages.N.KEY=VALUE, "
     "N from 0); without it the run is one stage of schedule.steps. name: the stage's name in logs, metrics and "
     "plots"},
    {"loss", "lm | attention_transfer", "lm",
     "lm: next-token cross-entropy; attention_transfer: the mean squared difference between each layer's converted "
     "attention output and the softmax attention's on the same inputs, summed over layers (docs/training.md)"},
    {"train", "all | added | added_qk", "all (added for attention_transfer)",
     "all: every trainable tensor (less optimizer.freeze); added: only what the attention conversion added; "
     "added_qk: that and the query and key projections (an attention-transfer stage then computes the teacher from "
     "the source's own projections)"},
    {"steps", "integer", "required", "optimizer steps of the stage"},
    {"warmup", "integer", "schedule.warmup", "steps of linear warm-up at the start of the stage"},
    {"lr", "number", "optimizer.lr", "peak learning rate of the stage"},
    {"min_lr", "number", "optimizer.min_lr", "learning rate at the end of the stage's cosine decay"},
    {"distill_weight", "number", "0",
     "lm stages: adds distill_weight x temperature^2 x KL(teacher || model) of the next-token distributions to the "
     "cross-entropy, the teacher being model.source (kept whole on every rank); 0: no teacher"},
    {"temperature", "number", "1", "the distillation's softmax temperature"},
};

std::string closest_stage_key(const std::string& name) {
  std::string best;
  size_t best_distance = std::numeric_limits<size_t>::max();
  for (const StageKey& key : kStageKeys) {
    const size_t distance = edit_distance(name, key.name);
    if (distance < best_distance) {
      best_distance = distance;
      best = key.name;
    }
  }
  return best;
}

void assign_stage(StageSpec& stage, size_t index, const std::string& key, const YAML::Node& node,
                  const std::string& where) {
  const std::string path = fmt::format("stages[{}].{}", index, key);
  const auto wrong = [&](const char* expected) {
    fail("{}: '{}' must be {}, got {}", where, path, expected,
         node.IsScalar() ? fmt::format("'{}'", node.Scalar()) : std::string(node.IsSequence() ? "a list" : node.IsMap() ? "a mapping" : "nothing"));
  };
  const auto pick = [&]<class E>(std::optional<E>& field) {
    if (!node.IsScalar()) wrong("one of the listed values");
    const auto value = find_choice<E>(node.Scalar());
    if (!value) {
      std::vector<std::string> names;
      for (const auto& [v, spelling] : Choices<E>::values) names.emplace_back(spelling);
      fail("{}: '{}' is '{}', expected one of: {}", where, path, node.Scalar(), fmt::join(names, ", "));
    }
    field = *value;
  };
  try {
    if (key == "name") {
      if (!node.IsScalar() || node.Scalar().empty()) wrong("a non-empty string");
      stage.name = node.Scalar();
    } else if (key == "loss") {
      pick(stage.loss);
    } else if (key == "train") {
      pick(stage.train);
    } else if (key == "steps" || key == "warmup") {
      if (!node.IsScalar()) wrong("an integer");
      (key == "steps" ? stage.steps : stage.warmup) = node.as<int64_t>();
    } else if (key == "lr" || key == "min_lr" || key == "distill_weight" || key == "temperature") {
      if (!node.IsScalar()) wrong("a number");
      (key == "lr" ? stage.lr : key == "min_lr" ? stage.min_lr : key == "distill_weight" ? stage.distill_weight
                                                                                         : stage.temperature) =
          node.as<double>();
    } else {
      fail("{}: unknown key '{}' (did you mean 'stages[{}].{}'?)", where, path, index, closest_stage_key(key));
    }
  } catch (const YAML::BadConversion&) {
    wrong(key == "steps" || key == "warmup" ? "an integer" : "a number");
  }
}

std::vector<StageSpec> read_stages(const YAML::Node& node, const std::string& file) {
  const std::string where = origin(file, node);
  if (!node.IsSequence()) fail("{}: 'stages' must be a list of stages (mappings of name, loss, train, steps, ...)", where);
  std::vector<StageSpec> stages(node.size());
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node item = node[i];
    if (!item.IsMap()) fail("{}: stages[{}] must be a mapping of stage keys", origin(file, item), i);
    for (const auto& entry : item) {
      if (!entry.first.IsScalar()) fail("{}: a key must be a plain name in stages[{}]", origin(file, entry.first), i);
      assign_stage(stages[i], i, entry.first.Scalar(), entry.second, origin(file, entry.first));
    }
  }
  return stages;
}

// The stages of the run from what the file said: defaults filled in, each stage's first step.
void resolve_stages(Experiment& e, const std::vector<StageSpec>& specs, bool steps_given, const std::string& file) {
  if (!e.explicit_stages) {
    e.stages = {default_stage(e)};
    return;
  }
  if (specs.empty()) fail("{}: 'stages' is empty; leave it out for one stage of schedule.steps", file);
  const int64_t given_steps = e.steps;
  e.stages.clear();
  int64_t begin = 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const StageSpec& spec = specs[i];
    Stage stage;
    stage.name = spec.name.value_or(fmt::format("stage{}", i + 1));
    stage.loss = spec.loss.value_or(StageLoss::LanguageModel);
    stage.train = spec.train.value_or(stage.loss == StageLoss::AttentionTransfer ? StageTrains::Added : StageTrains::All);
    if (!spec.steps) fail("{}: missing required key 'stages[{}].steps'", file, i);
    stage.steps = *spec.steps;
    stage.warmup = spec.warmup.value_or(e.warmup);
    stage.lr = spec.lr.value_or(e.lr);
    stage.min_lr = spec.min_lr.value_or(e.min_lr);
    stage.distill_weight = spec.distill_weight.value_or(0.0);
    stage.temperature = spec.temperature.value_or(1.0);
    stage.begin = begin;
    if (!(stage.distill_weight >= 0) || !(stage.temperature > 0))
      fail("{}: stages[{}]: distill_weight must be at least 0 and temperature positive", file, i);
    if (stage.distill_weight > 0 && stage.loss != StageLoss::LanguageModel)
      fail("{}: stages[{}] ('{}') distils, but only an lm stage can: its loss is {}", file, i, stage.name,
           choice_name(stage.loss));
    if (stage.steps < 1) fail("{}: 'stages[{}].steps' must be at least 1, got {}", file, i, stage.steps);
    if (stage.warmup < 0) fail("{}: 'stages[{}].warmup' must not be negative", file, i);
    if (!(stage.lr > 0) || !(stage.min_lr >= 0) || stage.min_lr > stage.lr)
      fail("{}: stages[{}]: learning rates must satisfy 0 <= min_lr <= lr and lr > 0", file, i);
    for (const Stage& earlier : e.stages)
      if (earlier.name == stage.name) fail("{}: two stages are named '{}'", file, stage.name);
    if (stage.loss == StageLoss::AttentionTransfer) {
      // The teacher's attention goes through the model's dense projection (and, unless a stage trains
      // q and k, its query_key_value): they must be the source's, untrained.
      if (stage.train == StageTrains::All)
        fail("{}: stages[{}] ('{}') is attention_transfer with train: all, but the teacher's attention is computed "
             "from the weights it would train; use train: added or added_qk", file, i, stage.name);
      for (const Stage& earlier : e.stages)
        if (earlier.train == StageTrains::All)
          fail("{}: stages[{}] ('{}') is attention_transfer after '{}', which trains every tensor: the teacher's "
               "attention needs the source's weights, so attention-transfer stages come first", file, i, stage.name,
               earlier.name);
    }
    e.stages.push_back(stage);
    begin += stage.steps;
  }
  if (steps_given && given_steps != begin)
    fail("{}: schedule.steps is {} but the stages add up to {} steps; leave schedule.steps out (the run takes the "
         "sum of the stages' steps)", file, given_steps, begin);
  e.steps = begin;
}

void check_values(const Experiment& e, const std::string& file) {
  const auto positive = [&](int64_t value, const char* path) {
    if (value < 1) fail("{}: '{}' must be at least 1, got {}", file, path, value);
  };
  positive(e.seq_len, "data.seq_len");
  positive(e.micro_batch, "batch.micro_batch");
  positive(e.grad_accum, "batch.grad_accum");
  positive(e.steps, "schedule.steps");
  positive(e.checkpoint_every, "checkpoint.every");
  positive(e.keep, "checkpoint.keep");
  positive(e.log_every, "logging.every");
  positive(e.max_bad_steps, "schedule.max_bad_steps");
  positive(e.dijiang.chunk, "model.dijiang.chunk");
  if (e.attention == TargetAttention::RetNet && e.dijiang.projection == FeatureProjection::Gaussian)
    fail("{}: model.attention retnet has no feature map, but model.dijiang.projection is gaussian", file);
  if (e.converts_to_linear()) {
    // The baselines have no DCT features, decay, gate or feature weights: options for those would be ignored.
    const DiJiangOptions defaults;
    const std::pair<bool, const char*> dijiang_only[] = {
        {e.dijiang.sampling != defaults.sampling, "sampling"},
        {e.dijiang.projection != defaults.projection, "projection"},
        {e.dijiang.feature_weights != defaults.feature_weights, "feature_weights"},
        {e.dijiang.learnable_decay != defaults.learnable_decay, "learnable_decay"},
        {e.dijiang.group_norm_per_head != defaults.group_norm_per_head, "group_norm_per_head"}};
    for (const auto& [set, key] : dijiang_only)
      if (set)
        fail("{}: model.dijiang.{} applies to DiJiang attention, but model.attention is {} (which takes only "
             "model.dijiang.seed, chunk and form)", file, key, choice_name(e.attention));
    // Only the performer adds a tensor, and it is fixed: a stage training only the added tensors trains nothing.
    for (const Stage& stage : e.stages)
      if (stage.train == StageTrains::Added)
        fail("{}: stage '{}' trains only the tensors the conversion added, but {} attention adds none that train: "
             "use train: added_qk (the query and key projections) or all", file, stage.name, choice_name(e.attention));
  }
  if (e.warmup < 0) fail("{}: 'schedule.warmup' must not be negative", file);
  if (e.global_tokens != 0 && e.global_tokens != e.tokens_per_step())
    fail("{}: batch.global_tokens {} differs from micro_batch {} x grad_accum {} x seq_len {} = {}", file,
         e.global_tokens, e.micro_batch, e.grad_accum, e.seq_len, e.tokens_per_step());
  if (e.eval_every < 0) fail("{}: 'logging.eval_every' must not be negative", file);
  if (!(e.lr > 0) || !(e.min_lr >= 0) || e.min_lr > e.lr)
    fail("{}: learning rates must satisfy 0 <= optimizer.min_lr <= optimizer.lr and lr > 0", file);
  if (!(e.beta1 >= 0 && e.beta1 < 1 && e.beta2 >= 0 && e.beta2 < 1))
    fail("{}: optimizer.beta1 and beta2 must lie in [0, 1)", file);
  if (e.zero_stage < 0 || e.zero_stage > 3)
    fail("{}: 'distributed.zero_stage' must be 0, 1, 2 or 3, got {}", file, e.zero_stage);
  if (!(e.timeout_s > 0)) fail("{}: 'distributed.timeout_s' must be positive", file);
  if (!(e.eps > 0) || !(e.weight_decay >= 0) || !(e.grad_clip >= 0))
    fail("{}: optimizer.eps must be positive, weight_decay and grad_clip non-negative", file);
}

}  // namespace

Stage default_stage(const Experiment& e) {
  Stage stage;
  stage.name = "train";
  stage.steps = e.steps;
  stage.warmup = e.warmup;
  stage.lr = e.lr;
  stage.min_lr = e.min_lr;
  return stage;
}

size_t Experiment::stage_index(int64_t done) const {
  if (stages.empty()) fail("the experiment has no stages");
  for (size_t i = 0; i < stages.size(); ++i)
    if (done < stages[i].end()) return i;
  return stages.size() - 1;
}

const Stage& Experiment::stage_at(int64_t done) const { return stages[stage_index(done)]; }

bool matches_pattern(std::string_view pattern, std::string_view name) {
  // Iterative wildcard match with backtracking to the last '*'.
  size_t p = 0, n = 0, star = std::string_view::npos, mark = 0;
  while (n < name.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == name[n])) {
      ++p;
      ++n;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = n;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      n = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

namespace {

Experiment read_experiment(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  const std::string file = path.string();
  YAML::Node root;
  try {
    root = YAML::LoadFile(file);
  } catch (const YAML::BadFile&) {
    fail("{}: cannot open", file);
  } catch (const YAML::ParserException& e) {
    fail("{}:{}: {}", file, e.mark.line + 1, e.msg);
  }
  if (!root.IsMap()) fail("{}: expected a mapping of sections (model, data, batch, ...)", file);
  Experiment e;
  std::vector<std::string> seen;
  std::vector<StageSpec> stages;
  if (const YAML::Node node = static_cast<const YAML::Node&>(root)["stages"]) {
    stages = read_stages(node, file);
    e.explicit_stages = true;
    root.remove("stages");
  }
  walk(root, "", file, e, seen);
  for (const std::string& text : overrides) {
    const size_t equals = text.find('=');
    const std::string where = fmt::format("override '{}'", text);
    if (equals == std::string::npos || equals == 0) fail("{}: expected KEY=VALUE", where);
    const std::string key_path = text.substr(0, equals);
    if (key_path.starts_with("stages.")) {
      // stages.N.KEY=VALUE changes a key of stage N (from 0) of the file's stages.
      const size_t dot = key_path.find('.', 7);
      const std::string index_text = key_path.substr(7, dot == std::string::npos ? std::string::npos : dot - 7);
      if (dot == std::string::npos || index_text.empty() ||
          index_text.find_first_not_of("0123456789") != std::string::npos)
        fail("{}: a stage key is written stages.N.KEY (N from 0), e.g. stages.0.steps=100", where);
      const size_t index = std::stoul(index_text);
      if (index >= stages.size())
        fail("{}: the experiment has {} stage(s); stages.{} does not exist", where, stages.size(), index);
      YAML::Node value;
      try {
        value = YAML::Load(text.substr(equals + 1));
      } catch (const YAML::ParserException& ex) {
        fail("{}: {}", where, ex.msg);
      }
      assign_stage(stages[index], index, key_path.substr(dot + 1), value, where);
      continue;
    }
    const Key* key = find_key(key_path);
    if (key == nullptr) fail("{}: unknown key '{}' (did you mean '{}'?)", where, key_path, closest_key(key_path));
    YAML::Node value;
    try {
      value = YAML::Load(text.substr(equals + 1));
    } catch (const YAML::ParserException& ex) {
      fail("{}: {}", where, ex.msg);
    }
    assign(e, *key, value, where);
    seen.push_back(key_path);
  }
  for (const Key& key : schema())
    if (key.required && std::find(seen.begin(), seen.end(), key.path) == seen.end())
      fail("{}: missing required key '{}'", file, key.path);
  resolve_stages(e, stages, std::find(seen.begin(), seen.end(), "schedule.steps") != seen.end(), file);
  check_values(e, file);
  return e;
}

}  // namespace

Experiment load_experiment(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
  // What the checks above do not foresee in a YAML document still ends as one message naming the file.
  try {
    return read_experiment(path, overrides);
  } catch (const YAML::Exception& e) {
    fail("{}{}: {}", path.string(), e.mark.is_null() ? "" : fmt::format(":{}", e.mark.line + 1), e.msg);
  }
}

namespace {

// Keys in schema order, nested by section, for emitting. (Children hold their own names: a
// vector of pairs with the incomplete type inside is not valid C++, and libc++/clang reject it.)
struct YamlTree {
  std::string name;
  std::vector<YamlTree> children;
  YAML::Node value;

  YamlTree& child(const std::string& key) {
    for (YamlTree& tree : children)
      if (tree.name == key) return tree;
    YamlTree& added = children.emplace_back();
    added.name = key;
    return added;
  }
  // The keys and values of this map, inside a map the caller opened.
  void emit_entries(YAML::Emitter& out) const {
    for (const YamlTree& tree : children) {
      out << YAML::Key << tree.name << YAML::Value;
      if (tree.children.empty())
        out << tree.value;
      else
        tree.emit(out);
    }
  }
  void emit(YAML::Emitter& out) const {
    out << YAML::BeginMap;
    emit_entries(out);
    out << YAML::EndMap;
  }
};

}  // namespace

namespace {

const char* type_name(const Key& key) {
  switch (key.kind) {
    case Kind::String: return "string";
    case Kind::Int: return "integer";
    case Kind::UInt: return "non-negative integer";
    case Kind::Float: return "number";
    case Kind::Bool: return "true or false";
    case Kind::StringList: return "list of strings";
    case Kind::Choice: return "choice";
  }
  return "";
}

std::string default_of(const Key& key) {
  Experiment e;
  switch (key.kind) {
    case Kind::String: {
      const auto& value = *static_cast<std::string*>(key.field(e));
      return value.empty() ? "\"\"" : value;
    }
    case Kind::Int: return fmt::format("{}", *static_cast<int64_t*>(key.field(e)));
    case Kind::UInt: return fmt::format("{}", *static_cast<uint64_t*>(key.field(e)));
    case Kind::Float: return fmt::format("{}", *static_cast<double*>(key.field(e)));
    case Kind::Bool: return *static_cast<bool*>(key.field(e)) ? "true" : "false";
    case Kind::StringList: return "[]";
    case Kind::Choice: return key.choice_of(e);
  }
  return "";
}

// `text` wrapped at `width` columns, each line indented by `indent` spaces.
std::string wrap(const std::string& text, size_t indent, size_t width) {
  std::string out, line;
  std::stringstream words(text);
  for (std::string word; words >> word;) {
    if (!line.empty() && indent + line.size() + 1 + word.size() > width) {
      out += std::string(indent, ' ') + line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
  }
  if (!line.empty()) out += std::string(indent, ' ') + line + "\n";
  return out;
}

}  // namespace

std::string experiment_keys_help() {
  std::string out;
  std::string section;
  for (const Key& key : schema()) {
    const size_t dot = key.path.find('.');
    const std::string key_section = dot == std::string::npos ? "" : key.path.substr(0, dot);
    if (key_section != section || out.empty()) out += "\n";
    section = key_section;
    const std::string type =
        key.kind == Kind::Choice ? fmt::format("{}", fmt::join(key.choices, " | ")) : std::string(type_name(key));
    out += fmt::format("{:<34} {}, {}\n", key.path, type,
                       key.required ? std::string("required") : "default " + default_of(key));
    out += wrap(key.help, 4, 100);
  }
  out += "\n";
  for (const StageKey& key : kStageKeys) {
    out += fmt::format("{:<34} {}, {}\n", fmt::format("stages[].{}", key.name), key.type,
                       std::string_view(key.fallback) == "required" ? std::string("required")
                                                                     : fmt::format("default {}", key.fallback));
    out += wrap(key.help, 4, 100);
  }
  return out;
}

std::string experiment_to_yaml(const Experiment& experiment) {
  Experiment e = experiment;
  YamlTree root;
  for (const Key& key : schema()) {
    YamlTree* node = &root;
    std::stringstream in(key.path);
    for (std::string part; std::getline(in, part, '.');) node = &node->child(part);
    YAML::Node& value = node->value;
    switch (key.kind) {
      case Kind::String: value = *static_cast<std::string*>(key.field(e)); break;
      case Kind::Choice: value = key.choice_of(e); break;
      case Kind::Int: value = *static_cast<int64_t*>(key.field(e)); break;
      case Kind::UInt: value = *static_cast<uint64_t*>(key.field(e)); break;
      case Kind::Float: value = *static_cast<double*>(key.field(e)); break;
      case Kind::Bool: value = *static_cast<bool*>(key.field(e)); break;
      case Kind::StringList:
        value = YAML::Node(YAML::NodeType::Sequence);
        for (const auto& s : *static_cast<std::vector<std::string>*>(key.field(e))) value.push_back(s);
        break;
    }
  }
  YAML::Emitter out;
  out.SetDoublePrecision(15);  // 0.1 prints as 0.1; 15 digits round-trip every decimal literal of a config
  if (!e.explicit_stages) {
    root.emit(out);
    return out.c_str();
  }
  // The sections, then the stages with every key resolved.
  out << YAML::BeginMap;
  root.emit_entries(out);
  out << YAML::Key << "stages" << YAML::Value << YAML::BeginSeq;
  for (const Stage& stage : e.stages)
    out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << stage.name << YAML::Key << "loss" << YAML::Value
        << std::string(choice_name(stage.loss)) << YAML::Key << "train" << YAML::Value
        << std::string(choice_name(stage.train)) << YAML::Key << "steps" << YAML::Value << stage.steps << YAML::Key
        << "warmup" << YAML::Value << stage.warmup << YAML::Key << "lr" << YAML::Value << stage.lr << YAML::Key
        << "min_lr" << YAML::Value << stage.min_lr << YAML::Key << "distill_weight" << YAML::Value
        << stage.distill_weight << YAML::Key << "temperature" << YAML::Value << stage.temperature << YAML::EndMap;
  out << YAML::EndSeq << YAML::EndMap;
  return out.c_str();
}

}  // namespace dj
