// The training loop: exact resume, and a loss that goes down.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "fixture_paths.h"
#include "kernels/backend.h"
#include "kernels/core/error.h"
#include "trainer/checkpoint/native.h"
#include "trainer/data/indexed_dataset.h"
#include "trainer/data/npy.h"
#include "trainer/model/init.h"
#include "trainer/model/parameters.h"
#include "trainer/model/source.h"
#include "trainer/train/token_batches.h"
#include "trainer/train/trainer.h"

namespace dj {
namespace {

namespace fs = std::filesystem;

Experiment tiny_experiment(const fs::path& out, const std::string& attention) {
  Experiment e;
  e.model_source = test::fixture("neox_parallel/f32").string();
  e.attention = parse_choice<TargetAttention>(attention, "attention", "test");
  e.dijiang.chunk = 8;
  e.train_tokens = test::fixture("neox_parallel/eval_tokens.npy").string();
  e.valid_tokens = e.train_tokens;
  e.seq_len = 24;
  e.micro_batch = 2;
  e.grad_accum = 2;
  e.steps = 20;
  e.warmup = 3;
  e.lr = 3e-3;
  e.min_lr = 3e-4;
  e.checkpoint_every = 5;
  e.keep = 10;
  e.log_every = 100;
  e.out_dir = out.string();
  return e;
}

std::vector<double> losses(const fs::path& dir) {
  std::vector<double> out;
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j.contains("loss")) out.push_back(j["loss"].get<double>());
  }
  return out;
}

class TrainingResume : public ::testing::TestWithParam<std::string> {};

// A 20-step run equals a 10-step run resumed for 10 steps, bit for bit: every loss and every
// parameter and optimizer moment of the final checkpoint.
TEST_P(TrainingResume, TwentyStepsEqualTenPlusTen) {
  const fs::path root = fs::temp_directory_path() / ("dijiang-resume-" + GetParam());
  fs::remove_all(root);
  const Experiment straight = tiny_experiment(root / "straight", GetParam());
  const TrainOutcome a = train(straight, false);
  ASSERT_EQ(a.step, 20);

  const Experiment split = tiny_experiment(root / "split", GetParam());
  const TrainOutcome first = train(split, false, 10);
  ASSERT_EQ(first.step, 10);
  const TrainOutcome second = train(split, true);
  ASSERT_EQ(second.step, 20);

  const std::vector<double> la = losses(root / "straight"), lb = losses(root / "split");
  ASSERT_EQ(la.size(), 20u);
  EXPECT_EQ(la, lb);
  EXPECT_LT(la.back(), la.front());  // it learns

  const NativeCheckpoint ca = read_native_checkpoint(a.checkpoint), cb = read_native_checkpoint(second.checkpoint);
  ASSERT_EQ(ca.tensors.size(), cb.tensors.size());
  for (const auto& [name, tensor] : ca.tensors) {
    const Tensor& other = cb.tensors.at(name);
    ASSERT_EQ(tensor.nbytes(), other.nbytes()) << name;
    EXPECT_EQ(std::memcmp(tensor.bytes(), other.bytes(), tensor.nbytes()), 0) << name;
  }
  EXPECT_EQ(ca.metadata.at("data_position"), cb.metadata.at("data_position"));
  fs::remove_all(root);
}

INSTANTIATE_TEST_SUITE_P(Attention, TrainingResume, ::testing::Values("keep", "dijiang"));

TEST(Training, FrozenTensorsDoNotMove) {
  const fs::path root = fs::temp_directory_path() / "dijiang-freeze";
  fs::remove_all(root);
  Experiment e = tiny_experiment(root, "dijiang");
  e.steps = 3;
  e.freeze = {"gpt_neox.layers.*.mlp.*", "embed_out.weight"};
  const TrainOutcome outcome = train(e, false);
  const NativeCheckpoint trained = read_native_checkpoint(outcome.checkpoint);
  const ModelSource pretrained = read_model_source(test::fixture("neox_parallel/f32"));
  const auto unchanged = [&](const std::string& name) {
    return trained.tensors.at(name).to_f64_vector() == pretrained.tensors.at(name).to_f64_vector();
  };
  EXPECT_TRUE(unchanged("gpt_neox.layers.0.mlp.dense_h_to_4h.weight"));
  EXPECT_TRUE(unchanged("gpt_neox.layers.1.mlp.dense_4h_to_h.bias"));
  EXPECT_TRUE(unchanged("embed_out.weight"));
  EXPECT_FALSE(unchanged("gpt_neox.layers.0.attention.dense.weight"));
  // The DiJiang projection is fixed by design: no optimizer state accumulates for it.
  for (double value : trained.tensors.at("optimizer.m.gpt_neox.layers.0.attention.proj_matrix").to_f64_vector())
    ASSERT_EQ(value, 0.0);
  fs::remove_all(root);
}

// Attention transfer for 8 steps, then the language model for 8.
Experiment staged_experiment(const fs::path& out) {
  Experiment e = tiny_experiment(out, "dijiang");
  e.explicit_stages = true;
  Stage transfer;
  transfer.name = "transfer";
  transfer.loss = StageLoss::AttentionTransfer;
  transfer.train = StageTrains::Added;
  transfer.steps = 8;
  transfer.warmup = 2;
  transfer.lr = 1e-2;
  transfer.min_lr = 1e-3;
  Stage finetune = transfer;
  finetune.name = "finetune";
  finetune.loss = StageLoss::LanguageModel;
  finetune.train = StageTrains::All;
  finetune.lr = 3e-3;
  finetune.min_lr = 3e-4;
  finetune.begin = 8;
  e.stages = {transfer, finetune};
  e.steps = 16;
  e.checkpoint_every = 3;
  return e;
}

std::vector<nlohmann::json> metric_lines(const fs::path& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

void expect_same_checkpoints(const fs::path& a, const fs::path& b) {
  const NativeCheckpoint ca = read_native_checkpoint(a), cb = read_native_checkpoint(b);
  ASSERT_EQ(ca.tensors.size(), cb.tensors.size());
  for (const auto& [name, tensor] : ca.tensors) {
    const Tensor& other = cb.tensors.at(name);
    ASSERT_EQ(tensor.nbytes(), other.nbytes()) << name;
    EXPECT_EQ(std::memcmp(tensor.bytes(), other.bytes(), tensor.nbytes()), 0) << name;
  }
}

// Stopped inside the transfer stage (step 5), at the boundary (step 8) or inside the fine-tuning
// (step 11) and resumed, a two-stage run ends with the same bits as one that never stopped.
TEST(TrainingStages, ResumeInsideEitherStageIsExact) {
  const fs::path root = fs::temp_directory_path() / "dijiang-stages-resume";
  fs::remove_all(root);
  const TrainOutcome straight = train(staged_experiment(root / "straight"), false);
  ASSERT_EQ(straight.step, 16);
  const std::vector<nlohmann::json> reference = metric_lines(root / "straight");
  for (const int64_t stop : {5, 8, 11}) {
    SCOPED_TRACE(stop);
    const fs::path dir = root / ("stop-" + std::to_string(stop));
    const Experiment e = staged_experiment(dir);
    ASSERT_EQ(train(e, false, stop).step, stop);
    const TrainOutcome resumed = train(e, true);
    ASSERT_EQ(resumed.step, 16);
    EXPECT_EQ(losses(dir), losses(root / "straight"));
    expect_same_checkpoints(straight.checkpoint, resumed.checkpoint);
  }
  // The metrics name each step's stage and objective; the transfer loss is a mean squared error
  // that falls, and the language-model loss follows.
  std::vector<double> transfer_losses;
  for (const auto& line : reference) {
    if (!line.contains("loss")) continue;
    const int64_t step = line["step"].get<int64_t>();
    EXPECT_EQ(line["stage"], step <= 8 ? "transfer" : "finetune") << step;
    EXPECT_EQ(line["objective"], step <= 8 ? "attention_transfer" : "lm") << step;
    if (step <= 8) transfer_losses.push_back(line["loss"].get<double>());
  }
  ASSERT_EQ(transfer_losses.size(), 8u);
  EXPECT_LT(transfer_losses.back(), transfer_losses.front());
  // Each stage starts a fresh AdamW: after the fine-tuning's first step, the moments of W_G (trained
  // in both stages) are those of one step from zero, v = (1 - β2) / (1 - β1)² · m², not carried over.
  const NativeCheckpoint first_finetune = read_native_checkpoint(root / "straight" / "ckpt-00000009.h5");
  const std::vector<double> m = first_finetune.tensors.at("optimizer.m.gpt_neox.layers.0.attention.W_G").to_f64_vector();
  const std::vector<double> v = first_finetune.tensors.at("optimizer.v.gpt_neox.layers.0.attention.W_G").to_f64_vector();
  for (size_t i = 0; i < m.size(); ++i) ASSERT_NEAR(v[i], 5.0 * m[i] * m[i], 1e-5 * v[i] + 1e-30) << i;
  EXPECT_TRUE(fs::exists(root / "straight" / "transfer.png"));
  EXPECT_TRUE(fs::exists(root / "straight" / "loss.png"));
  fs::remove_all(root);
}

// The transfer stage trains only what the conversion added: every other tensor ends bit-identical
// to the source's, with no optimizer state.
TEST(TrainingStages, TransferStageMovesOnlyTheAddedTensors) {
  const fs::path root = fs::temp_directory_path() / "dijiang-stages-frozen";
  fs::remove_all(root);
  Experiment e = staged_experiment(root);
  e.stages.resize(1);
  e.steps = 8;
  const TrainOutcome outcome = train(e, false);
  ASSERT_EQ(outcome.step, 8);
  const NativeCheckpoint trained = read_native_checkpoint(outcome.checkpoint);
  const ModelSource pretrained = read_model_source(test::fixture("neox_parallel/f32"));
  int64_t frozen = 0, moved = 0;
  for (const auto& [name, tensor] : trained.tensors) {
    if (name.starts_with("optimizer.")) continue;
    const std::vector<double> m = trained.tensors.at("optimizer.m." + name).to_f64_vector();
    const bool has_state = std::any_of(m.begin(), m.end(), [](double x) { return x != 0.0; });
    if (added_by_conversion(name)) {
      if (name.ends_with("proj_matrix") || name.ends_with("log_gamma")) continue;  // fixed by default
      EXPECT_TRUE(has_state) << name;
      moved += 1;
      continue;
    }
    const Tensor& source = pretrained.tensors.at(name);
    ASSERT_EQ(tensor.nbytes(), source.nbytes()) << name;
    EXPECT_EQ(std::memcmp(tensor.bytes(), source.bytes(), tensor.nbytes()), 0) << name;
    EXPECT_FALSE(has_state) << name;
    frozen += 1;
  }
  EXPECT_EQ(moved, 6);   // W_G and the GroupNorm's weight and bias of 2 layers
  EXPECT_GE(frozen, 20);
  fs::remove_all(root);
}

// train: added_qk also trains the rows of query_key_value that make q and k, and nothing else of
// it; the teacher then computes from the source's projections, so a run resumed inside the stage
// (whose own q and k have moved) ends with the same bits.
TEST(TrainingStages, TransferCanTrainQueryAndKey) {
  const fs::path root = fs::temp_directory_path() / "dijiang-stages-qk";
  fs::remove_all(root);
  Experiment e = staged_experiment(root / "straight");
  e.stages.resize(1);
  e.stages[0].train = StageTrains::AddedQK;
  e.steps = 8;
  const TrainOutcome outcome = train(e, false);
  const NativeCheckpoint trained = read_native_checkpoint(outcome.checkpoint);
  const ModelSource pretrained = read_model_source(test::fixture("neox_parallel/f32"));
  const ModelConfig config = ModelConfig::from_hf_json(trained.config, "checkpoint");
  const int64_t D = config.hidden_size, d = config.head_dim();
  for (const char* part : {"weight", "bias"}) {
    const std::string name = std::string("gpt_neox.layers.1.attention.query_key_value.") + part;
    const std::vector<double> now = trained.tensors.at(name).to_f64_vector();
    const std::vector<double> before = pretrained.tensors.at(name).to_f64_vector();
    const int64_t row = std::string(part) == "weight" ? D : 1;
    int64_t moved_qk = 0, moved_v = 0;
    for (size_t i = 0; i < now.size(); ++i) {
      const bool qk = (static_cast<int64_t>(i) / row) % (3 * d) < 2 * d;
      (qk ? moved_qk : moved_v) += now[i] != before[i] ? 1 : 0;
    }
    EXPECT_EQ(moved_v, 0) << name;  // v's rows are the source's, bit for bit
    EXPECT_GT(moved_qk, static_cast<int64_t>(now.size()) / 3) << name;
  }
  EXPECT_EQ(trained.tensors.at("gpt_neox.layers.0.attention.dense.weight").to_f64_vector(),
            pretrained.tensors.at("gpt_neox.layers.0.attention.dense.weight").to_f64_vector());
  Experiment split = e;
  split.out_dir = (root / "split").string();
  ASSERT_EQ(train(split, false, 5).step, 5);
  const TrainOutcome resumed = train(split, true);
  EXPECT_EQ(losses(root / "split"), losses(root / "straight"));
  expect_same_checkpoints(outcome.checkpoint, resumed.checkpoint);
  fs::remove_all(root);
}

// A fine-tuning stage with distillation from the source (the softmax model): its loss is the
// cross-entropy plus a positive KL term, and a run stopped inside it resumes with the same bits
// (the teacher is read again from model.source).
TEST(TrainingStages, DistillationFromTheSourceResumesExactly) {
  const fs::path root = fs::temp_directory_path() / "dijiang-stages-distill";
  fs::remove_all(root);
  Experiment e = staged_experiment(root / "straight");
  e.stages = {e.stages[1]};
  e.stages[0].begin = 0;
  e.stages[0].distill_weight = 0.5;
  e.stages[0].temperature = 2.0;
  e.steps = 8;
  const TrainOutcome straight = train(e, false);
  Experiment split = e;
  split.out_dir = (root / "split").string();
  ASSERT_EQ(train(split, false, 5).step, 5);
  const TrainOutcome resumed = train(split, true);
  EXPECT_EQ(losses(root / "split"), losses(root / "straight"));
  expect_same_checkpoints(straight.checkpoint, resumed.checkpoint);
  // Without the term, the first step's loss is the cross-entropy alone: smaller.
  Experiment plain = e;
  plain.out_dir = (root / "plain").string();
  plain.stages[0].distill_weight = 0.0;
  train(plain, false, 1);
  EXPECT_LT(losses(root / "plain").front(), losses(root / "straight").front());
  fs::remove_all(root);
}

// A linear-attention baseline converted and trained as DiJiang is: a transfer stage on its q and k
// rows (it adds no trainable tensor), then fine-tuning; stopped inside the transfer stage and
// resumed, it ends with the same bits, and its checkpoint records the baseline.
TEST(TrainingStages, ABaselineTrainsInStagesAndResumesExactly) {
  const fs::path root = fs::temp_directory_path() / "dijiang-stages-baseline";
  fs::remove_all(root);
  Experiment e = staged_experiment(root / "straight");
  e.attention = TargetAttention::Performer;
  e.stages[0].train = StageTrains::AddedQK;
  const TrainOutcome straight = train(e, false);
  ASSERT_EQ(straight.step, 16);
  const NativeCheckpoint trained = read_native_checkpoint(straight.checkpoint);
  const ModelConfig config = ModelConfig::from_hf_json(trained.config, "checkpoint");
  EXPECT_TRUE(config.is_linear());
  EXPECT_EQ(config.linear.feature_map, cpu::LinearFeatureMap::Performer);
  EXPECT_TRUE(trained.tensors.contains("gpt_neox.layers.0.attention.proj_matrix"));
  EXPECT_FALSE(trained.tensors.contains("gpt_neox.layers.0.attention.W_G"));
  const std::vector<double> transfer = losses(root / "straight");
  ASSERT_EQ(transfer.size(), 16u);
  EXPECT_LT(transfer[7], transfer[0]);  // the transfer loss falls
  Experiment split = e;
  split.out_dir = (root / "split").string();
  ASSERT_EQ(train(split, false, 5).step, 5);
  const TrainOutcome resumed = train(split, true);
  EXPECT_EQ(losses(root / "split"), transfer);
  expect_same_checkpoints(straight.checkpoint, resumed.checkpoint);
  // train: added has nothing to train in a baseline.
  Experiment nothing = e;
  nothing.out_dir = (root / "nothing").string();
  nothing.stages[0].train = StageTrains::Added;
  try {
    train(nothing, false);
    ADD_FAILURE() << "accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("performer attention adds none that train"), std::string::npos)
        << error.what();
  }
  fs::remove_all(root);
}

TEST(TrainingStages, TransferNeedsConvertedAttention) {
  const fs::path root = fs::temp_directory_path() / "dijiang-stages-softmax";
  fs::remove_all(root);
  Experiment e = staged_experiment(root);
  e.attention = TargetAttention::Keep;
  try {
    train(e, false);
    ADD_FAILURE() << "accepted";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("stage 'transfer' is attention_transfer, but the model has softmax attention"),
              std::string::npos)
        << error.what();
  }
  fs::remove_all(root);
}

TEST(Training, PythiaOrderVisitsStoredSamplesInOrder) {
  std::vector<int32_t> tokens(50);
  for (int32_t i = 0; i < 50; ++i) tokens[static_cast<size_t>(i)] = i;
  TokenBatches batches(tokens, 9, 0, true);  // samples of 10 tokens, no overlap
  ASSERT_EQ(batches.samples(), 5);
  DataCursor cursor;
  std::vector<int32_t> out(20);
  batches.next(out.data(), 2, cursor);
  EXPECT_EQ(out.front(), 0);
  EXPECT_EQ(out[10], 10);
  batches.next(out.data(), 2, cursor);
  EXPECT_EQ(out.front(), 20);
  batches.next(out.data(), 2, cursor);  // sample 4, then the next epoch starts again at 0
  EXPECT_EQ(out.front(), 40);
  EXPECT_EQ(out[10], 0);
  EXPECT_EQ(cursor.epoch, 1);

  TokenBatches shuffled(tokens, 9, 0, false);  // samples of 10 tokens sharing a boundary token
  EXPECT_EQ(shuffled.samples(), 5);
  DataCursor c2;
  std::vector<int32_t> all(50);
  shuffled.next(all.data(), 5, c2);
  std::vector<int32_t> starts;
  for (int i = 0; i < 5; ++i) starts.push_back(all[static_cast<size_t>(i * 10)]);
  std::sort(starts.begin(), starts.end());
  EXPECT_EQ(starts, (std::vector<int32_t>{0, 9, 18, 27, 36}));
}

// Pythia order on an indexed dataset streams its stored sequences (memory-mapped) in order and
// gives the same training as the same samples from an in-memory array.
TEST(Training, PythiaOrderStreamsAnIndexedDataset) {
  const fs::path root = fs::temp_directory_path() / "dijiang-pythia-order";
  fs::remove_all(root);
  fs::create_directories(root);
  const std::vector<int32_t> ids = read_npy_tokens(test::fixture("neox_parallel/eval_tokens.npy"));
  IndexedDatasetWriter writer((root / "samples").string());
  const int64_t sample = 25;  // seq_len 24 + 1
  for (int64_t i = 0; i + sample <= static_cast<int64_t>(ids.size()); i += sample)
    writer.add_document(std::vector<int32_t>(ids.begin() + i, ids.begin() + i + sample));
  writer.finish();

  Experiment streamed = tiny_experiment(root / "streamed", "keep");
  streamed.order = DataOrder::Pythia;
  streamed.steps = 4;
  streamed.train_tokens = (root / "samples").string();
  Experiment in_memory = streamed;
  in_memory.out_dir = (root / "in-memory").string();
  in_memory.train_tokens = test::fixture("neox_parallel/eval_tokens.npy").string();
  train(streamed, false);
  train(in_memory, false);
  EXPECT_EQ(losses(root / "streamed"), losses(root / "in-memory"));

  Experiment wrong = streamed;
  wrong.out_dir = (root / "wrong").string();
  wrong.seq_len = 30;
  EXPECT_THROW(train(wrong, false), Error);
  fs::remove_all(root);
}

TEST(Training, PrecisionOtherThanF32NeedsCuda) {
  Experiment e = tiny_experiment(fs::temp_directory_path() / "dijiang-precision", "keep");
  e.precision = Precision::BF16;
  request_device("cpu");
  try {
    train(e, false);
    FAIL() << "bf16 trained on the CPU";
  } catch (const Error& error) {
    EXPECT_NE(std::string(error.what()).find("precision bf16 needs a CUDA device"), std::string::npos) << error.what();
  }
}

TEST(Training, FromScratchOnAConfig) {
  const fs::path root = fs::temp_directory_path() / "dijiang-scratch";
  fs::remove_all(root);
  Experiment e = tiny_experiment(root, "keep");
  e.model_source = test::fixture("neox_parallel/f32/config.json").string();
  e.steps = 12;
  const TrainOutcome outcome = train(e, false);
  const std::vector<double> l = losses(root);
  ASSERT_EQ(l.size(), 12u);
  EXPECT_NEAR(l.front(), std::log(1000.0), 0.5);  // a fresh model predicts about uniformly
  EXPECT_LT(l.back(), l.front() - 0.1);
  fs::remove_all(root);
}

TEST(Training, InitialisationFollowsGptNeoX) {
  ModelConfig c;
  c.vocab_size = 500;
  c.hidden_size = 128;
  c.num_layers = 4;
  c.num_heads = 4;
  c.intermediate_size = 512;
  const TensorMap t = initial_tensors(c, 9);
  const auto stddev = [&](const std::string& name) {
    double sum = 0.0;
    const std::vector<double> v = t.at(name).to_f64_vector();
    for (double x : v) sum += x * x;
    return std::sqrt(sum / static_cast<double>(v.size()));
  };
  EXPECT_NEAR(stddev("gpt_neox.embed_in.weight"), std::sqrt(2.0 / (5.0 * 128)), 2e-3);
  EXPECT_NEAR(stddev("gpt_neox.layers.2.mlp.dense_4h_to_h.weight"), 2.0 / (4 * std::sqrt(128.0)), 2e-3);
  for (double x : t.at("gpt_neox.layers.0.input_layernorm.weight").to_f64_vector()) ASSERT_EQ(x, 1.0);
  for (double x : t.at("gpt_neox.layers.0.attention.dense.bias").to_f64_vector()) ASSERT_EQ(x, 0.0);
  EXPECT_EQ(initial_tensors(c, 9).at("embed_out.weight").to_f64_vector(), t.at("embed_out.weight").to_f64_vector());
}

}  // namespace
}  // namespace dj
