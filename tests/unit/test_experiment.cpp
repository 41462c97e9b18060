// YAML experiments: a table of bad configs, each with the message it must give, and the
// resolved form of a good one.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "fixture_paths.h"
#include "kernels/core/error.h"
#include "trainer/config/experiment.h"

namespace dj {
namespace {

namespace fs = std::filesystem;

fs::path write_yaml(const std::string& name, const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / "dijiang-experiment-tests";
  fs::create_directories(dir);
  const fs::path path = dir / name;
  std::ofstream(path) << text;
  return path;
}

const std::string kGood =
    "model:\n"
    "  source: data/tiny-neox\n"
    "  attention: dijiang\n"
    "  dijiang: {seed: 3, chunk: 32}\n"
    "data:\n"
    "  train: t.npy\n"
    "  seq_len: 64\n"
    "optimizer:\n"
    "  lr: 3.0e-4\n"
    "  min_lr: 3.0e-5\n"
    "  freeze: ['gpt_neox.embed_in.*']\n"
    "schedule: {steps: 50, warmup: 5}\n";

TEST(Experiment, GoodConfigWithOverrides) {
  const Experiment e = load_experiment(write_yaml("good.yaml", kGood), {"batch.micro_batch=8", "optimizer.lr=1e-3"});
  EXPECT_EQ(e.model_source, "data/tiny-neox");
  EXPECT_EQ(e.attention, TargetAttention::DiJiang);
  EXPECT_EQ(e.dijiang.seed, 3u);
  EXPECT_EQ(e.dijiang.chunk, 32);
  EXPECT_EQ(e.seq_len, 64);
  EXPECT_EQ(e.micro_batch, 8);
  EXPECT_DOUBLE_EQ(e.lr, 1e-3);
  EXPECT_EQ(e.freeze, std::vector<std::string>{"gpt_neox.embed_in.*"});
  EXPECT_EQ(e.steps, 50);
  EXPECT_EQ(e.grad_accum, 1);  // default
  // A string key given nothing (`data.valid=`, or `valid:` in the file) is the empty string.
  EXPECT_EQ(load_experiment(write_yaml("good.yaml", kGood), {"data.valid="}).valid_tokens, "");
  // The resolved YAML loads back to the same experiment.
  const Experiment again = load_experiment(write_yaml("resolved.yaml", experiment_to_yaml(e)), {});
  EXPECT_EQ(experiment_to_yaml(again), experiment_to_yaml(e));
}

struct BadConfig {
  std::string name, yaml;
  std::vector<std::string> overrides;
  std::string message;
};

// Each config is refused with a message containing its text.
void expect_refusals(const std::vector<BadConfig>& table) {
  for (const BadConfig& bad : table) {
    SCOPED_TRACE(bad.name);
    try {
      load_experiment(write_yaml(bad.name + ".yaml", bad.yaml), bad.overrides);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(bad.message), std::string::npos) << e.what();
    }
  }
}

TEST(Experiment, BadConfigsGiveClearMessages) {
  const std::vector<BadConfig> table = {
      {"unknown_key", "model:\n  sorce: x\ndata: {train: t.npy}\n", {},
       "unknown_key.yaml:2: unknown key 'model.sorce' (did you mean 'model.source'?)"},
      {"unknown_section", "model: {source: x}\ndata: {train: t.npy}\noptimiser: {lr: 1}\n", {},
       "unknown_section.yaml:3: unknown key 'optimiser' (did you mean 'optimizer.lr'?)"},
      {"wrong_type", "model: {source: x}\ndata: {train: t.npy}\nbatch:\n  micro_batch: many\n", {},
       "wrong_type.yaml:4: 'batch.micro_batch' must be an integer, got 'many'"},
      {"wrong_float", "model: {source: x}\ndata: {train: t.npy}\noptimizer: {lr: fast}\n", {},
       "'optimizer.lr' must be a number, got 'fast'"},
      {"list_expected", "model: {source: x}\ndata: {train: t.npy}\noptimizer: {freeze: embed}\n", {},
       "'optimizer.freeze' must be a list of strings, got 'embed'"},
      {"section_scalar", "model: x\ndata: {train: t.npy}\n", {}, "section_scalar.yaml:1: 'model' must be a mapping of keys"},
      {"bad_choice", "model: {source: x, attention: linear}\ndata: {train: t.npy}\n", {},
       "'model.attention' is 'linear', expected one of: keep, softmax, dijiang"},
      {"missing_required", "model: {source: x}\n", {}, "missing required key 'data.train'"},
      {"negative_seed", "model: {source: x}\ndata: {train: t.npy}\nseed: -4\n", {},
       "'seed' must be a non-negative integer, got '-4'"},
      {"zero_batch", "model: {source: x}\ndata: {train: t.npy}\nbatch: {micro_batch: 0}\n", {},
       "'batch.micro_batch' must be at least 1, got 0"},
      {"lr_order", "model: {source: x}\ndata: {train: t.npy}\noptimizer: {lr: 1.0e-4, min_lr: 1.0e-3}\n", {},
       "0 <= optimizer.min_lr <= optimizer.lr"},
      {"syntax", "model: {source: x\ndata: [\n", {}, "syntax.yaml:"},
      {"not_mapping", "- a\n- b\n", {}, "expected a mapping of sections"},
      {"override_unknown", "model: {source: x}\ndata: {train: t.npy}\n", {"optimizer.lrate=3"},
       "override 'optimizer.lrate=3': unknown key 'optimizer.lrate' (did you mean 'optimizer.lr'?)"},
      {"override_type", "model: {source: x}\ndata: {train: t.npy}\n", {"schedule.steps=ten"},
       "override 'schedule.steps=ten': 'schedule.steps' must be an integer, got 'ten'"},
      {"override_form", "model: {source: x}\ndata: {train: t.npy}\n", {"schedule.steps"}, "expected KEY=VALUE"},
      {"override_empty", "model: {source: x}\ndata: {train: t.npy}\n", {"schedule.steps="},
       "override 'schedule.steps=': 'schedule.steps' must be an integer, got nothing"},
      {"global_tokens", "model: {source: x}\ndata: {train: t.npy, seq_len: 64}\nbatch: {micro_batch: 2, global_tokens: 100}\n",
       {}, "batch.global_tokens 100 differs from micro_batch 2 x grad_accum 1 x seq_len 64 = 128"},
      {"order", "model: {source: x}\ndata: {train: t.npy, order: random}\n", {},
       "'data.order' is 'random', expected one of: shuffled, pythia"},
      {"dijiang_option", "model: {source: x, dijiang: {samplng: qmc}}\ndata: {train: t.npy}\n", {},
       "unknown key 'model.dijiang.samplng' (did you mean 'model.dijiang.sampling'?)"},
      {"zero_stage", "model: {source: x}\ndata: {train: t.npy}\ndistributed: {zero_stage: 4}\n", {},
       "'distributed.zero_stage' must be 0, 1, 2 or 3, got 4"},
      {"timeout", "model: {source: x}\ndata: {train: t.npy}\n", {"distributed.timeout_s=0"},
       "'distributed.timeout_s' must be positive"},
      {"bad_form", "model: {source: x}\ndata: {train: t.npy}\n", {"model.dijiang.form=diagonal"},
       "override 'model.dijiang.form=diagonal': 'model.dijiang.form' is 'diagonal', expected one of: parallel, "
       "chunkwise, recurrent"},
      {"cpu_only_precision", "model: {source: x}\ndata: {train: t.npy}\nprecision: f64\n", {},
       "cpu_only_precision.yaml:3: 'precision' is 'f64', expected one of: f32, bf16"},
      {"choice_not_scalar", "model: {source: x, dijiang: {sampling: [qmc]}}\ndata: {train: t.npy}\n", {},
       "choice_not_scalar.yaml:1: 'model.dijiang.sampling' must be one of the listed values, got a list"},
      {"list_as_key", "model:\n  source: x\n  ? [a, b]\n  : 1\ndata: {train: t.npy}\n", {},
       "list_as_key.yaml:3: a key must be a plain name, got a list in 'model'"},
      {"mapping_as_key", "model:\n  source: x\n? dijiang:\n    seed: 0\ndata: {train: t.npy}\n", {},
       "mapping_as_key.yaml:3: a key must be a plain name, got a mapping"},
      {"distributed_key", "model: {source: x}\ndata: {train: t.npy}\ndistributed: {zero: 1}\n", {},
       "unknown key 'distributed.zero' (did you mean 'distributed.zero_stage'?)"},
  };
  expect_refusals(table);
  EXPECT_THROW(load_experiment("/nonexistent/x.yaml", {}), Error);
}

// Choices become enumerations when the file is read, and print back as they were spelt.
TEST(Experiment, ChoicesAreEnumerations) {
  const Experiment e = load_experiment(write_yaml("choices.yaml", kGood),
                                       {"model.dijiang.form=recurrent", "model.dijiang.sampling=mc",
                                        "data.order=pythia", "precision=bf16"});
  EXPECT_EQ(e.attention, TargetAttention::DiJiang);
  EXPECT_EQ(e.dijiang.form, cpu::DecayForm::Recurrent);
  EXPECT_EQ(e.dijiang.sampling, FeatureSampling::MC);
  EXPECT_EQ(e.order, DataOrder::Pythia);
  EXPECT_EQ(e.precision, Precision::BF16);
  const std::string yaml = experiment_to_yaml(e);
  for (const char* line : {"attention: dijiang", "form: recurrent", "sampling: mc", "order: pythia", "precision: bf16"})
    EXPECT_NE(yaml.find(line), std::string::npos) << line << " in\n" << yaml;
  // The resolved YAML reads back to the same experiment.
  const Experiment again = load_experiment(write_yaml("resolved.yaml", yaml), {});
  EXPECT_EQ(experiment_to_yaml(again), yaml);
}

// `train --list-keys`: every key once, with its type or choices, its default (or "required") and
// an indented line of help.
TEST(Experiment, KeysDescribeThemselves) {
  const std::string help = experiment_keys_help();
  int keys = 0;
  std::stringstream lines(help);
  std::string line;
  while (std::getline(lines, line)) {
    if (!line.empty() && line[0] != ' ') {
      ++keys;
      EXPECT_TRUE(line.find(", default ") != std::string::npos || line.find(", required") != std::string::npos)
          << line;
      std::string next;
      ASSERT_TRUE(std::getline(lines, next)) << line;
      EXPECT_TRUE(next.starts_with("    ") && next.size() > 12) << "no help under " << line;
    }
  }
  EXPECT_EQ(keys, 46);  // 37 keys and 9 of each stage
  for (const char* expected :
       {"model.source                       string, required", "model.dijiang.form                 parallel | chunkwise | "
                                                               "recurrent, default chunkwise",
        "precision                          f32 | bf16, default f32", "optimizer.lr                       number, default 0.001",
        "optimizer.freeze                   list of strings, default []", "seed                               "
                                                                          "non-negative integer, default 1234",
        "data.valid                         string, default \"\"",
        "stages[].loss                      lm | attention_transfer, default lm",
        "stages[].steps                     integer, required"})
    EXPECT_NE(help.find(expected), std::string::npos) << expected << " in\n" << help;
}

const std::string kStaged = kGood.substr(0, kGood.find("schedule:")) +
                            "schedule: {warmup: 4}\n"
                            "stages:\n"
                            "  - {name: transfer, loss: attention_transfer, steps: 20, lr: 1.0e-3}\n"
                            "  - name: finetune\n"
                            "    steps: 30\n"
                            "    warmup: 2\n";

TEST(Experiment, StagesTakeTheirDefaultsAndRunInOrder) {
  const Experiment e = load_experiment(write_yaml("staged.yaml", kStaged),
                                       {"stages.1.min_lr=1e-6", "stages.1.distill_weight=0.5", "stages.1.temperature=2"});
  ASSERT_TRUE(e.explicit_stages);
  ASSERT_EQ(e.stages.size(), 2u);
  const Stage &transfer = e.stages[0], &finetune = e.stages[1];
  EXPECT_EQ(transfer.name, "transfer");
  EXPECT_EQ(transfer.loss, StageLoss::AttentionTransfer);
  EXPECT_EQ(transfer.train, StageTrains::Added);  // the default of a transfer stage
  EXPECT_EQ(transfer.steps, 20);
  EXPECT_EQ(transfer.warmup, 4);                  // schedule.warmup
  EXPECT_DOUBLE_EQ(transfer.lr, 1e-3);
  EXPECT_DOUBLE_EQ(transfer.min_lr, 3e-5);        // optimizer.min_lr
  EXPECT_EQ(finetune.loss, StageLoss::LanguageModel);
  EXPECT_EQ(finetune.train, StageTrains::All);
  EXPECT_EQ(finetune.begin, 20);
  EXPECT_EQ(finetune.warmup, 2);
  EXPECT_DOUBLE_EQ(finetune.lr, 3e-4);
  EXPECT_DOUBLE_EQ(finetune.min_lr, 1e-6);        // the override
  EXPECT_DOUBLE_EQ(finetune.distill_weight, 0.5);
  EXPECT_DOUBLE_EQ(finetune.temperature, 2.0);
  EXPECT_DOUBLE_EQ(transfer.distill_weight, 0.0);
  EXPECT_DOUBLE_EQ(transfer.temperature, 1.0);
  EXPECT_EQ(e.steps, 50);
  EXPECT_EQ(e.stage_index(0), 0u);
  EXPECT_EQ(e.stage_index(19), 0u);
  EXPECT_EQ(e.stage_index(20), 1u);
  EXPECT_EQ(e.stage_index(50), 1u);
  // The resolved YAML lists every stage key and reads back to the same experiment.
  const std::string yaml = experiment_to_yaml(e);
  EXPECT_NE(yaml.find("loss: attention_transfer"), std::string::npos) << yaml;
  const Experiment again = load_experiment(write_yaml("staged-resolved.yaml", yaml), {});
  EXPECT_EQ(experiment_to_yaml(again), yaml);
  // Without stages: one, today's run.
  const Experiment plain = load_experiment(write_yaml("plain.yaml", kGood), {});
  ASSERT_EQ(plain.stages.size(), 1u);
  EXPECT_FALSE(plain.explicit_stages);
  EXPECT_EQ(plain.stages[0].steps, 50);
  EXPECT_EQ(plain.stages[0].warmup, 5);
  EXPECT_EQ(plain.stages[0].loss, StageLoss::LanguageModel);
  EXPECT_EQ(experiment_to_yaml(plain).find("stages"), std::string::npos);
}

TEST(Experiment, BadStagesGiveClearMessages) {
  const std::string head = "model: {source: x}\ndata: {train: t.npy}\n";
  const std::vector<BadConfig> table = {
      {"stages_not_list", head + "stages: {steps: 3}\n", {}, "stages_not_list.yaml:3: 'stages' must be a list"},
      {"stage_unknown", head + "stages:\n  - {steps: 3, los: lm}\n", {},
       "unknown key 'stages[0].los' (did you mean 'stages[0].loss'?)"},
      {"stage_no_steps", head + "stages:\n  - {loss: lm}\n", {}, "missing required key 'stages[0].steps'"},
      {"stage_bad_loss", head + "stages:\n  - {steps: 3, loss: mse}\n", {},
       "'stages[0].loss' is 'mse', expected one of: lm, attention_transfer"},
      {"stage_steps_type", head + "stages:\n  - {steps: many}\n", {}, "'stages[0].steps' must be an integer, got 'many'"},
      {"stage_zero", head + "stages:\n  - {steps: 0}\n", {}, "'stages[0].steps' must be at least 1, got 0"},
      {"stage_empty", head + "stages: []\n", {}, "'stages' is empty"},
      {"stage_twice", head + "stages:\n  - {name: a, steps: 1}\n  - {name: a, steps: 1}\n", {},
       "two stages are named 'a'"},
      {"stage_lr", head + "stages:\n  - {steps: 1, lr: 1.0e-4, min_lr: 1.0e-3}\n", {}, "stages[0]: learning rates"},
      {"stage_steps_conflict", head + "schedule: {steps: 10}\nstages:\n  - {steps: 3}\n", {},
       "schedule.steps is 10 but the stages add up to 3 steps"},
      {"transfer_all", head + "stages:\n  - {steps: 3, loss: attention_transfer, train: all}\n", {},
       "is attention_transfer with train: all"},
      {"transfer_late", head + "stages:\n  - {name: ft, steps: 3}\n  - {steps: 3, loss: attention_transfer}\n", {},
       "is attention_transfer after 'ft', which trains every tensor"},
      {"stage_override_missing", head + "stages:\n  - {steps: 3}\n", {"stages.1.steps=4"},
       "the experiment has 1 stage(s); stages.1 does not exist"},
      {"stage_override_form", head + "stages:\n  - {steps: 3}\n", {"stages.first.steps=4"},
       "a stage key is written stages.N.KEY"},
      {"distill_transfer", head + "stages:\n  - {steps: 3, loss: attention_transfer, distill_weight: 1}\n", {},
       "distils, but only an lm stage can"},
      {"distill_negative", head + "stages:\n  - {steps: 3, distill_weight: -1}\n", {},
       "distill_weight must be at least 0 and temperature positive"},
      {"distill_temperature", head + "stages:\n  - {steps: 3, temperature: 0}\n", {},
       "distill_weight must be at least 0 and temperature positive"},
      {"stage_override_key", head + "stages:\n  - {steps: 3}\n", {"stages.0.step=4"},
       "unknown key 'stages[0].step' (did you mean 'stages[0].steps'?)"},
      {"baseline_added", head + "stages:\n  - {steps: 3, loss: attention_transfer}\n", {"model.attention=cosformer"},
       "stage 'stage1' trains only the tensors the conversion added, but cosformer attention adds none that train"},
      {"baseline_dijiang_option", head + "stages:\n  - {steps: 3}\n",
       {"model.attention=elu", "model.dijiang.learnable_decay=true"},
       "model.dijiang.learnable_decay applies to DiJiang attention, but model.attention is elu"},
  };
  expect_refusals(table);
}

TEST(Experiment, NamePatterns) {
  EXPECT_TRUE(matches_pattern("gpt_neox.layers.*.attention.W_G", "gpt_neox.layers.3.attention.W_G"));
  EXPECT_TRUE(matches_pattern("*", ""));
  EXPECT_TRUE(matches_pattern("a?c", "abc"));
  EXPECT_FALSE(matches_pattern("a?c", "ac"));
  EXPECT_FALSE(matches_pattern("*.bias", "x.bias.y"));
  EXPECT_TRUE(matches_pattern("*a*b*", "xxaxxbxx"));
}

TEST(Experiment, ShippedConfigsAreValid) {
  int checked = 0;
  for (const auto& entry : fs::recursive_directory_iterator(test::source_dir() / "configs")) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    EXPECT_NO_THROW(load_experiment(entry.path(), {}));
    ++checked;
  }
  EXPECT_GE(checked, 11);  // ten Pythia sizes and the micro experiments
}

}  // namespace
}  // namespace dj
