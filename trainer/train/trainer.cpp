#include "trainer/train/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>

#include <nlohmann/json.hpp>

#include <sys/resource.h>

#include "comm/single_communicator.h"
#include "kernels/backend.h"
#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/native.h"
#include "trainer/checkpoint/verify.h"
#include "trainer/data/token_stream.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/evaluate.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/init.h"
#include "trainer/model/source.h"
#include "trainer/optim/adamw.h"
#include "trainer/report/plot.h"
#include "trainer/train/gpu.h"
#include "trainer/train/memory_plan.h"
#include "trainer/train/resources.h"
#include "trainer/train/run_directory.h"
#include "trainer/train/training_state.h"
#include "trainer/train/training_step.h"
#include "trainer/train/token_batches.h"

namespace dj {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> stop_requested{false};
extern "C" void on_stop_signal(int) { stop_requested = true; }

// Installs the stop handlers for the lifetime of a run and restores the previous ones: SIGINT and
// SIGTERM, and SIGUSR1, which mpirun forwards to every rank (SIGTERM to mpirun instead kills the
// ranks after a second, too soon for a checkpoint; launch/mpirun.sh turns it into SIGUSR1).
class StopSignals {
 public:
  StopSignals() {
    stop_requested = false;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    for (size_t i = 0; i < kSignals.size(); ++i) sigaction(kSignals[i], &action, &previous_[i]);
  }
  ~StopSignals() {
    for (size_t i = 0; i < kSignals.size(); ++i) sigaction(kSignals[i], &previous_[i], nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  static constexpr std::array<int, 3> kSignals = {SIGINT, SIGTERM, SIGUSR1};
  std::array<struct sigaction, 3> previous_{};
};


struct Metric {
  int64_t step;
  double loss, lr, grad_norm, tokens_per_s;
  size_t stage;
};

std::string duration_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

class Run {
 public:
  Run(const Experiment& e, comm::Communicator& comm, bool resume)
      : e_(e), comm_(comm), rank_(comm.rank()), world_(comm.size()),
        on_gpu_(select_backend().backend == Backend::CUDA) {
    if (e_.stages.empty()) e_.stages = {default_stage(e_)};
    if (!on_gpu_ && e_.precision != Precision::F32)
      fail("precision {} needs a CUDA device; the CPU trains in f32 (set precision: f32)", choice_name(e_.precision));
    if (rank_ == 0) fs::create_directories(e_.out_dir);
    fs::path from;
    if (resume) {
      from = resume_checkpoint(e_.out_dir);
      if (from.empty() && rank_ == 0)
        spdlog::warn("--resume: no checkpoint in {}; starting from {}", e_.out_dir, e_.model_source);
    }
    if (!from.empty() && is_flat_checkpoint(from)) {
      // Each rank reads only the ranges its stage keeps, whatever the rank count that wrote it.
      auto reader = std::make_shared<FlatCheckpointReader>(from);
      ModelSource source;
      source.kind = ModelSource::Kind::Native;
      source.path = from;
      source.config = ModelConfig::from_hf_json(reader->config(), from.string());
      source.metadata = reader->metadata();
      prepare_attention(source);
      make_state(source.config);
      load([&](const std::string& dataset, int64_t begin, int64_t end, float* out) {
        reader->read(dataset, begin, end, out);
        source_bytes_read_ += (end - begin) * static_cast<int64_t>(sizeof(float));
      }, true);
      start_peak_ = peak_resident_bytes();
      restore(source.metadata, from);
    } else {
      // The source is opened, not read: each rank reads the ranges of the tensors its ZeRO slice
      // holds (the whole model at stages 0-2, 1/ranks of it at stage 3), converted to f32 as
      // they are read; DiJiang tensors are made the same way.
      const int64_t read_before = stored_bytes_read();
      StoredModelSource source = from.empty() ? initial_source() : open_model_source(from);
      prepare_attention(source);
      make_state(source.config);
      const ParameterLayout& layout = layout_;
      check_tensors(layout, source.config, source.tensors, source.path.string());
      if (!from.empty()) check_optimizer_state(source, from);
      load([&](const std::string& dataset, int64_t begin, int64_t end, float* out) {
        const StoredTensorMap& map = dataset == kFlatParameters ? source.tensors : source.optimizer_state;
        const std::string prefix = dataset == kFlatParameters ? "" : dataset + ".";
        for (const auto& view : layout.views()) {
          const int64_t lo = std::max(begin, view.offset), hi = std::min(end, view.offset + view.numel());
          if (lo >= hi) continue;
          map.at(prefix + view.name)
              .read_elements(lo - view.offset, hi - lo, DType::F32, reinterpret_cast<std::byte*>(out + (lo - begin)));
        }
      }, !from.empty());
      source_bytes_read_ = stored_bytes_read() - read_before;
      start_peak_ = peak_resident_bytes();
      if (!from.empty()) restore(source.metadata, from);
    }
    load_transfer_teacher();
    load_distillation_teacher();
    if (from.empty() && rank_ == 0) std::ofstream(metrics_path(), std::ios::trunc);

    if (e_.order == DataOrder::Pythia && !e_.train_tokens.ends_with(".npy")) {
      // Pythia-scale data stays memory-mapped; ids are checked as each batch is drawn.
      std::vector<std::string> shards;
      std::stringstream in(e_.train_tokens);
      for (std::string prefix; std::getline(in, prefix, ',');) shards.push_back(prefix);
      batches_ = std::make_unique<TokenBatches>(IndexedDataset::open_shards(shards), e_.seq_len);
    } else {
      std::vector<int32_t> train_tokens = read_token_stream(e_.train_tokens);
      check_vocabulary(train_tokens, e_.train_tokens);
      batches_ = std::make_unique<TokenBatches>(std::move(train_tokens), e_.seq_len, e_.seed, e_.order == DataOrder::Pythia);
    }
    if (!e_.valid_tokens.empty()) {
      valid_ = read_token_stream(e_.valid_tokens);
      check_vocabulary(valid_, e_.valid_tokens);
    }
  }

  TrainOutcome run(int64_t stop_after) {
    StopSignals signals;
    const ModelConfig& c = config_;
    const int64_t global = e_.sequences_per_step(), T = batches_->sample_tokens();
    // This rank's slice of every global batch, cut into the same number of micro-batches on
    // every rank (collectives run inside each backward); a rank with fewer sequences than
    // micro-batches pads with passes that carry no gradient.
    const int64_t lo = global * rank_ / world_, hi = global * (rank_ + 1) / world_, local = hi - lo;
    const int64_t largest = (global + world_ - 1) / world_;
    const int64_t micro_batches = std::max<int64_t>(1, (largest + e_.micro_batch - 1) / e_.micro_batch);
    spdlog::info("model: {} layers, hidden {}, {} attention, {:.2f}M parameters", c.num_layers, c.hidden_size,
                 c.attention_name(),
                 static_cast<double>(c.parameter_count()) / 1e6);
    spdlog::info("data: {} samples of {} tokens; {} sequences ({} tokens) per step; steps {} -> {}",
                 batches_->samples(), T, global, e_.tokens_per_step(), step_, e_.steps);
    spdlog::info("training on {}", state_->description());
    if (world_ > 1) {
      spdlog::info("distributed: {} ranks ({}), ZeRO stage {}; {}-{} sequences per rank in {} micro-batches", world_,
                   comm_.backend(), e_.zero_stage, global / world_, largest, micro_batches);
      if (global % world_ != 0 || global < world_ * micro_batches)
        spdlog::warn("the global batch of {} sequences does not divide evenly over {} ranks in micro-batches of {}; "
                     "some ranks run padding passes", global, world_, e_.micro_batch);
    }
    TrainOutcome outcome;
    // Resident memory outside the state now, and the peak from here on (the training's).
    rss_outside_state_ = resident_bytes() - state_->memory().total();
    reset_peak_resident();
    const auto start = std::chrono::steady_clock::now();
    const int64_t first_step = step_;
    state_->collectives().reset_traffic();
    std::vector<int32_t> batch(static_cast<size_t>(std::max<int64_t>(local, 1) * T), 0);
    stage_ = e_.stages.size();  // none entered yet
    while (step_ < e_.steps) {
      if (e_.stage_index(step_) != stage_) enter_stage(e_.stage_index(step_));
      const Stage& stage = e_.stages[stage_];
      const auto step_start = std::chrono::steady_clock::now();
      batches_->next_slice(batch.data(), global, lo, hi, cursor_);
      // Streamed data is checked as it arrives; in-memory data was checked once at start.
      if (batches_->streamed()) check_vocabulary(batch, e_.train_tokens);
      const double lr = learning_rate(step_ - stage.begin, stage.lr, stage.min_lr, stage.warmup, stage.steps);
      StepInput input;
      input.ids = batch.data();
      input.local = local;
      input.global = global;
      input.tokens = T;
      input.micro_batches = micro_batches;
      input.step = step_ - stage.begin + 1;  // each stage's AdamW counts its own steps
      input.lr = lr;
      input.grad_clip = e_.grad_clip;
      input.adamw = AdamWConfig{e_.beta1, e_.beta2, e_.eps, e_.weight_decay};
      input.vote = stop_requested.load() ? 1.0 : 0.0;
      const StepOutcome result = training_step(*state_, comm_, input);
      const double loss = result.loss, norm = result.norm;
      if (!result.updated) {
        ++bad_steps_;
        spdlog::warn("step {}: non-finite {} ({}); update skipped ({} in a row)", step_ + 1,
                     std::isfinite(loss) ? "gradient norm" : "loss", std::isfinite(loss) ? norm : loss, bad_steps_);
      } else {
        bad_steps_ = 0;
      }
      ++step_;
      const double step_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
      const double tokens_per_s = static_cast<double>(e_.tokens_per_step()) / step_seconds;
      if (rank_ == 0) record({step_, loss, lr, norm, tokens_per_s, stage_});
      outcome.last_loss = loss;
      {
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double per_step = elapsed / static_cast<double>(step_ - first_step);
        const std::string status =
            fmt::format("step {}/{}{} | loss {:.4f} | lr {:.3e} | grad norm {:.3f} | {:.0f} tok/s | ETA {}", step_,
                        e_.steps, e_.explicit_stages ? fmt::format(" [{}]", stage.name) : std::string(), loss, lr,
                        norm, tokens_per_s,
                        duration_text(per_step * static_cast<double>(e_.steps - step_)));
        if (step_ % e_.log_every == 0 || step_ == e_.steps) {
          if (progress_on_terminal_) std::fputs("\r\033[K", stderr);
          spdlog::info("{}", status);
        } else if (progress_on_terminal_ && rank_ == 0) {
          // On a terminal a bar between the logged lines shows every step.
          constexpr int kWidth = 30;
          const auto filled = static_cast<int>(kWidth * step_ / e_.steps);
          std::fprintf(stderr, "\r\033[K[%s%s] %s", std::string(static_cast<size_t>(filled), '#').c_str(),
                       std::string(static_cast<size_t>(kWidth - filled), '.').c_str(), status.c_str());
          std::fflush(stderr);
        }
      }
      if (e_.eval_every > 0 && step_ % e_.eval_every == 0) validate();
      const bool signalled = result.votes > 0;
      const bool stopping = signalled || (stop_after > 0 && step_ - first_step >= stop_after);
      if (bad_steps_ >= e_.max_bad_steps) {
        outcome.checkpoint = save();
        // Every rank saw the same global loss and norm, so every rank stops here alike.
        throw comm::JobError(fmt::format("{} consecutive steps had a non-finite loss or gradient; stopped after "
                                         "writing {}", bad_steps_, outcome.checkpoint.string()),
                             rank_ == 0);
      }
      if (stopping || step_ % e_.checkpoint_every == 0 || step_ == e_.steps) {
        if (step_ % e_.checkpoint_every == 0 || step_ == e_.steps) validate();
        outcome.checkpoint = save();
      }
      if (stopping) {
        outcome.interrupted = signalled;
        if (outcome.interrupted)
          spdlog::warn("stop requested: checkpoint {} written at step {}", outcome.checkpoint.string(), step_);
        break;
      }
    }
    outcome.step = step_;
    report_resources(first_step);
    return outcome;
  }

 private:
  // model.source is a model, or a GPT-NeoX config.json to train from scratch (weights from
  // initial_tensors, seeded by the experiment's seed).
  StoredModelSource initial_source() const {
    const fs::path path = e_.model_source;
    if (!(fs::is_regular_file(path) && path.extension() == ".json")) return open_model_source(path);
    std::ifstream in(path);
    nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
    if (json.is_discarded()) fail("{}: bad JSON", path.string());
    StoredModelSource source;
    source.path = path;
    source.hf_config = json;
    source.config = ModelConfig::from_hf_json(json, path.string());
    if (source.config.is_converted()) fail("{}: a config to train from scratch must have softmax attention", path.string());
    for (auto& [name, tensor] : initial_tensors(source.config, e_.seed))
      source.tensors.emplace(name, StoredTensor::in_memory(std::move(tensor)));
    if (rank_ == 0) spdlog::info("initialised a fresh model from {} (seed {})", path.string(), e_.seed);
    return source;
  }

  template <class Source>
  void prepare_attention(Source& source) {
    if (e_.attention == TargetAttention::Softmax && source.config.is_converted())
      fail("model.attention is softmax but {} has {} attention", source.path.string(), source.config.attention_name());
    if (e_.converts_attention() && !source.config.is_converted()) {
      if (e_.converts_to_linear()) {
        const LinearOptions options = e_.linear_options();
        convert_to_linear(source, options);
        if (rank_ == 0)
          spdlog::info("converted {} to {} attention (normalised linear attention, seed {})", source.path.string(),
                       choice_name(e_.attention), options.seed);
      } else {
        const DiJiangOptions options = e_.conversion_options();
        convert_to_dijiang(source, options);
        if (rank_ == 0)
          spdlog::info("converted {} to {} attention (projection {}, sampling {}, seed {})", source.path.string(),
                       choice_name(e_.attention), choice_name(options.projection), choice_name(options.sampling),
                       options.seed);
      }
    } else if (e_.converts_attention()) {
      // A converted source continues only as what it is.
      ModelConfig target;
      target.attention = e_.converts_to_linear() ? AttentionKind::Linear : AttentionKind::DiJiang;
      target.linear = e_.linear_options();
      target.dijiang = e_.conversion_options();
      if (target.attention_name() != source.config.attention_name())
        fail("model.attention is {} but {} has {} attention", choice_name(e_.attention), source.path.string(),
             source.config.attention_name());
    }
  }

  // The model with its parameters, gradients and moments in a ZeRO state of the experiment's stage,
  // on the CPU or the GPU; the update masks cover the range this rank updates.
  void make_state(const ModelConfig& config) {
    config_ = config;
    layout_ = ParameterLayout::gpt_neox(config);
    const int stage = static_cast<int>(e_.zero_stage);
    if (on_gpu_) {
      // Refused before anything is allocated when the plan does not fit the device.
      const RankMemory planned = plan_rank_memory(plan_input(e_, config, world_, stage, true), rank_);
      state_ = gpu::make_training_state(config, stage, e_.precision, comm_, planned.total(),
                                        plan_table(e_, config, world_, true, gpu::device_memory().total));
    } else {
      state_ = make_cpu_training_state(config, stage, comm_);
    }
    for (const Stage& s : e_.stages)
      if (s.loss == StageLoss::AttentionTransfer && !config.is_converted())
        fail("stage '{}' is attention_transfer, but the model has softmax attention: set model.attention to dijiang "
             "(or another conversion) to convert it", s.name);
      else if (s.train == StageTrains::Added && config.is_linear())
        fail("stage '{}' trains only the tensors the conversion added, but {} attention adds none that train: use "
             "train: added_qk or all", s.name, config.attention_name());
    build_masks(e_.stages.front());
    state_->set_masks(decay_, update_);
  }

  void load(const TrainingState::Reader& read, bool with_moments) { state_->load(read, with_moments); }

  // Stages that distil take the next-token distribution of model.source as it is on disk (read
  // again on resume): a whole second model on every rank.
  void load_distillation_teacher() {
    if (std::none_of(e_.stages.begin(), e_.stages.end(), [](const Stage& s) { return s.distill_weight > 0; }))
      return;
    const fs::path path = e_.model_source;
    if (fs::is_regular_file(path) && path.extension() == ".json")
      fail("a stage distils from model.source, but {} is a config to train from scratch: there is no teacher",
           path.string());
    const ModelSource source = read_model_source(path);
    if (source.config.vocab_size != config_.vocab_size)
      fail("{}: the distillation teacher's vocabulary ({}) differs from the model's ({})", path.string(),
           source.config.vocab_size, config_.vocab_size);
    state_->set_distillation_teacher(source.config, source.tensors, path.string());
    if (rank_ == 0)
      spdlog::info("distillation: the teacher is {} ({} attention, {:.2f}M parameters, whole on every rank)",
                   path.string(), source.config.attention_name(),
                   static_cast<double>(source.config.parameter_count()) / 1e6);
  }

  // Attention-transfer stages that train q and k compute the teacher from the source's own
  // query_key_value, read again from model.source (on resume too, when the run's have moved).
  void load_transfer_teacher() {
    if (std::none_of(e_.stages.begin(), e_.stages.end(), [](const Stage& s) {
          return s.loss == StageLoss::AttentionTransfer && s.train == StageTrains::AddedQK;
        }))
      return;
    const fs::path path = e_.model_source;
    if (fs::is_regular_file(path) && path.extension() == ".json")
      fail("an attention-transfer stage trains q and k, which needs the teacher's trained projections, but "
           "model.source {} is a config to train from scratch", path.string());
    const StoredModelSource source = open_model_source(path);
    const int64_t D = config_.hidden_size;
    std::vector<std::vector<float>> weights, biases;
    const auto read = [&](const std::string& name, const Shape& shape) {
      const auto it = source.tensors.find(name);
      if (it == source.tensors.end() || it->second.shape() != shape)
        fail("{}: the attention-transfer teacher needs '{}' of shape {}", path.string(), name, fmt::join(shape, "x"));
      std::vector<float> values(static_cast<size_t>(shape_numel(shape)));
      it->second.read_elements(0, shape_numel(shape), DType::F32, reinterpret_cast<std::byte*>(values.data()));
      return values;
    };
    for (int64_t l = 0; l < config_.num_layers; ++l) {
      const std::string name = layer_prefix(l) + "attention.query_key_value.";
      weights.push_back(read(name + "weight", {3 * D, D}));
      if (config_.attention_bias) biases.push_back(read(name + "bias", {3 * D}));
    }
    state_->set_transfer_teacher(weights, biases);
    if (rank_ == 0)
      spdlog::info("attention transfer: the teacher's query, key and value projections come from {}", path.string());
  }

  void check_optimizer_state(const StoredModelSource& source, const fs::path& from) const {
    for (const auto& view : layout_.views())
      for (const char* prefix : {"optimizer.m.", "optimizer.v."}) {
        const auto it = source.optimizer_state.find(prefix + view.name);
        if (it == source.optimizer_state.end() || it->second.shape() != view.shape || it->second.dtype() != DType::F32)
          fail("{}: optimizer state '{}{}' is missing or malformed", from.string(), prefix, view.name);
      }
  }

  // Starts stage `index` at step_: its trained tensors and loss, and, when it starts here rather
  // than resuming inside it, a fresh AdamW (the moments of the stage before are not carried over).
  void enter_stage(size_t index) {
    const Stage& stage = e_.stages[index];
    stage_ = index;
    build_masks(stage);
    state_->set_masks(decay_, update_);
    state_->set_objective(stage.loss, stage.distill_weight, stage.temperature);
    if (step_ == stage.begin && index > 0) state_->reset_moments();
    if (rank_ != 0) return;
    const char* which = stage.train == StageTrains::All     ? "every trainable tensor"
                        : stage.train == StageTrains::Added ? "the tensors the conversion added"
                                                            : "the tensors the conversion added, and q and k";
    const std::string what = fmt::format("steps {} -> {}, lr {:.3g} -> {:.3g}, warm-up {}; training {:.2f}M values ({})",
                                         step_, stage.end(), stage.lr, stage.min_lr, stage.warmup,
                                         static_cast<double>(trained_values_) / 1e6, which);
    const std::string loss = stage.distill_weight > 0
                                 ? fmt::format("{} + {:g} x distillation at temperature {:g}", choice_name(stage.loss),
                                               stage.distill_weight, stage.temperature)
                                 : std::string(choice_name(stage.loss));
    if (e_.explicit_stages)
      spdlog::info("stage {}/{} '{}' ({}): {}", index + 1, e_.stages.size(), stage.name, loss, what);
    else
      spdlog::info("schedule: {}", what);
  }

  void build_masks(const Stage& stage) {
    const int64_t begin = state_->update_begin(), end = state_->update_end();
    decay_.assign(static_cast<size_t>(end - begin), 0);
    update_.assign(decay_.size(), 0);
    trained_values_ = 0;
    for (const auto& view : layout_.views()) {
      // Pythia decays matrices (embeddings included), not biases, norms or other 1-D tensors.
      const bool decay = view.shape.size() >= 2;
      bool frozen = !view.trainable;
      for (const auto& pattern : e_.freeze) frozen = frozen || matches_pattern(pattern, view.name);
      const bool train = !frozen && (stage.train == StageTrains::All || added_by_conversion(view.name));
      // added_qk: the rows of query_key_value that make q and k (each head's first 2·head_dim of
      // its 3·head_dim rows; the weight's rows are hidden_size values long, the bias's one).
      const bool qk_rows = !frozen && stage.train == StageTrains::AddedQK &&
                           view.name.find(".attention.query_key_value.") != std::string::npos;
      const int64_t row = view.shape.size() >= 2 ? view.shape[1] : 1, head_dim = config_.head_dim();
      const auto trains = [&](int64_t i) {  // value i of the view
        return train || (qk_rows && (i / row) % (3 * head_dim) < 2 * head_dim);
      };
      if (train) trained_values_ += view.numel();
      if (qk_rows) trained_values_ += view.numel() / 3 * 2;
      const int64_t lo = std::max(begin, view.offset), hi = std::min(end, view.offset + view.numel());
      if (lo >= hi) continue;
      std::fill(decay_.begin() + (lo - begin), decay_.begin() + (hi - begin), static_cast<uint8_t>(decay));
      for (int64_t i = lo; i < hi; ++i) update_[static_cast<size_t>(i - begin)] = static_cast<uint8_t>(trains(i - view.offset));
    }
  }

  void check_vocabulary(const std::vector<int32_t>& tokens, const std::string& file) const {
    const int64_t vocab = config_.vocab_size;
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] >= vocab) fail("{}: token id {} at index {} is not below the model's vocab_size {}", file, tokens[i], i, vocab);
  }

  fs::path metrics_path() const { return fs::path(e_.out_dir) / "metrics.jsonl"; }

  void record(const Metric& metric) {
    history_.push_back(metric);
    std::ofstream out(metrics_path(), std::ios::app);
    nlohmann::json line{{"step", metric.step}, {"loss", metric.loss}, {"lr", metric.lr},
                        {"grad_norm", metric.grad_norm}, {"tokens_per_s", metric.tokens_per_s}};
    if (e_.explicit_stages) {
      const Stage& stage = e_.stages[metric.stage];
      line["stage"] = stage.name;
      line["objective"] = choice_name(stage.loss);
    }
    out << line.dump() << "\n";
  }

  // Mean loss over consecutive windows of seq_len + 1 validation tokens, as `dijiang eval` cuts
  // them. The ranks share the windows (a contiguous run each, the last also taking the shorter
  // tail) and sum their losses; at stage 3 the forward gathers parameters collectively, so there
  // every rank evaluates every window instead. Rank 0 reports.
  void validate() {
    if (valid_.size() < 2) return;
    const comm::Traffic before = state_->collectives().traffic();
    const int64_t window = e_.seq_len + 1, n = static_cast<int64_t>(valid_.size());
    const bool shared = world_ > 1 && e_.zero_stage < 3;
    std::vector<int32_t> part;
    if (shared) {
      const int64_t full = n / window;
      const int64_t first = full * rank_ / world_ * window;
      const int64_t last = rank_ + 1 == world_ ? n : full * (rank_ + 1) / world_ * window;
      part.assign(valid_.begin() + first, valid_.begin() + last);
    }
    const std::vector<int32_t>& ids = shared ? part : valid_;
    double sums[2] = {0.0, 0.0};  // {loss sum, predictions}
    if (ids.size() >= 2) {
      const EvalResult r = state_->evaluate(ids, window, e_.micro_batch);
      sums[0] = r.loss_sum;
      sums[1] = static_cast<double>(r.predicted);
    }
    if (shared) comm_.all_reduce_host(sums, 2);
    // Stage 3 gathers parameters for validation too; the per-step report counts training only.
    const comm::Traffic& after = state_->collectives().traffic();
    validation_traffic_.all_gather += after.all_gather - before.all_gather;
    const double loss = sums[0] / sums[1];
    if (rank_ != 0) return;
    spdlog::info("step {}: validation loss {:.4f}, perplexity {:.2f}", step_, loss, std::exp(loss));
    std::ofstream(metrics_path(), std::ios::app)
        << nlohmann::json{{"step", step_}, {"valid_loss", loss}, {"valid_ppl", std::exp(loss)}}.dump() << "\n";
  }

  nlohmann::json metadata() const {
    return {{"kind", "training"},
            {"step", step_},
            {"data_epoch", cursor_.epoch},
            {"data_position", cursor_.position},
            {"bad_steps", bad_steps_},
            {"experiment", experiment_to_yaml(e_)},
            {"ranks", world_},
            {"zero_stage", e_.zero_stage}};
  }

  // One process writes ckpt-<step>.h5 (tensors and moments); several write ckpt-<step>/, each
  // rank its slice of the flat buffers, and rank 0 completes it once all are written.
  fs::path save() {
    const fs::path dir(e_.out_dir);
    if (world_ == 1) {
      NativeCheckpoint checkpoint;
      checkpoint.config = config_.to_hf_json();
      checkpoint.metadata = metadata();
      const fs::path path = checkpoint_path(dir, step_, true);
      state_->with_owned([&](const float* params, const float* m, const float* v) {
        // The tensors borrow the state's buffers: nothing is copied before HDF5 writes them.
        for (const auto& view : layout_.views()) {
          checkpoint.tensors.emplace(view.name, Tensor::borrowed(DType::F32, view.shape, params + view.offset));
          checkpoint.tensors.emplace("optimizer.m." + view.name, Tensor::borrowed(DType::F32, view.shape, m + view.offset));
          checkpoint.tensors.emplace("optimizer.v." + view.name, Tensor::borrowed(DType::F32, view.shape, v + view.offset));
        }
        write_native_checkpoint(path, checkpoint);
      });
      prune();
      plot();
      return path;
    }
    const fs::path path = checkpoint_path(dir, step_, false);
    const fs::path staging = flat_staging_dir(path);
    std::string error;
    if (rank_ == 0) {
      try {
        reset_flat_staging_dir(staging);
      } catch (const Error& e) {
        error = e.what();
      }
    }
    comm_.agree(error);
    // Every rank's slice of the flat buffers.
    const int64_t begin = state_->owned_begin(), end = state_->owned_end();
    FlatShardHeader header{rank_, world_, begin, end, layout_.total(), config_.to_hf_json(), metadata()};
    error.clear();
    try {
      state_->with_owned([&](const float* params, const float* m, const float* v) {
        write_flat_shard(staging, header, params, m, v);
      });
    } catch (const Error& e) {
      error = e.what();
    }
    try {
      comm_.agree(error);
    } catch (...) {
      // A rank could not write its file (a full disk, say): the previous checkpoint stays the
      // newest, and the partial one goes.
      if (rank_ == 0) {
        try {
          clear_flat_staging_dir(staging);
        } catch (const Error& e) {
          spdlog::warn("{}", e.what());
        }
      }
      throw;
    }
    if (rank_ == 0) {
      try {
        finish_flat_checkpoint(staging, path, world_);
        prune();
        plot();
      } catch (const Error& e) {
        error = e.what();
      }
    }
    comm_.agree(error);
    return path;
  }

  void prune() const { prune_checkpoints(e_.out_dir, e_.keep); }

  // loss.png: the language-model stages' loss, a series per stage; transfer.png: the
  // attention-transfer stages' (another scale); lr.png: the learning rate over every stage.
  void plot() const {
    std::vector<PlotSeries> lm, transfer;
    PlotSeries lr{"learning rate", {}, {}};
    for (const Metric& m : history_) {
      const Stage& stage = e_.stages[std::min(m.stage, e_.stages.size() - 1)];
      auto& group = stage.loss == StageLoss::AttentionTransfer ? transfer : lm;
      const std::string name = e_.explicit_stages ? stage.name : "training loss";
      if (group.empty() || group.back().name != name) group.push_back({name, {}, {}});
      group.back().x.push_back(static_cast<double>(m.step));
      group.back().y.push_back(m.loss);
      lr.x.push_back(static_cast<double>(m.step));
      lr.y.push_back(m.lr);
    }
    const auto points = [](const std::vector<PlotSeries>& group) {
      size_t n = 0;
      for (const PlotSeries& series : group) n += series.x.size();
      return n;
    };
    if (points(lm) >= 2)
      write_line_plot(fs::path(e_.out_dir) / "loss.png", {"Training loss", "step", "loss (nats/token)"}, lm);
    if (points(transfer) >= 2)
      write_line_plot(fs::path(e_.out_dir) / "transfer.png",
                      {"Attention-transfer loss", "step", "mean squared error, summed over layers"}, transfer);
    if (history_.size() >= 2)
      write_line_plot(fs::path(e_.out_dir) / "lr.png", {"Learning rate", "step", "learning rate"}, {lr});
  }

  // Restores the step, data cursor and metric history of a checkpoint (the moments were loaded
  // with the parameters).
  void restore(const nlohmann::json& meta, const fs::path& from) {
    if (meta.value("kind", "") != "training")
      fail("{}: not a training checkpoint (no optimizer state)", from.string());
    step_ = meta.at("step").get<int64_t>();
    cursor_ = {meta.at("data_epoch").get<int64_t>(), meta.at("data_position").get<int64_t>()};
    bad_steps_ = meta.value("bad_steps", int64_t{0});
    if (rank_ != 0) return;
    // Keep the metrics up to the resumed step, so that curves continue without duplicates.
    std::vector<std::string> kept;
    std::ifstream in(metrics_path());
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || j.value("step", int64_t{0}) > step_) continue;
      kept.push_back(line);
      if (j.contains("loss"))
        history_.push_back({j["step"].get<int64_t>(), j["loss"].get<double>(), j["lr"].get<double>(),
                            j["grad_norm"].get<double>(), j["tokens_per_s"].get<double>(),
                            e_.stage_index(j["step"].get<int64_t>() - 1)});
    }
    in.close();
    std::ofstream out(metrics_path(), std::ios::trunc);
    for (const auto& line : kept) out << line << "\n";
    const int written_by = meta.value("ranks", 1);
    spdlog::info("resumed from {} at step {} (data epoch {}, position {}){}", from.string(), step_, cursor_.epoch,
                 cursor_.position,
                 written_by != world_ ? fmt::format("; resharded from {} to {} ranks", written_by, world_) : "");
  }

  void report_resources(int64_t first_step) {
    report_run_resources(*state_, comm_,
                         {e_, config_, rank_, world_, on_gpu_, std::max<int64_t>(1, step_ - first_step),
                          rss_outside_state_, validation_traffic_, source_bytes_read_, start_peak_});
  }

  Experiment e_;
  comm::Communicator& comm_;
  const int rank_, world_;
  const bool progress_on_terminal_ = isatty(STDERR_FILENO) != 0;
  const bool on_gpu_;
  ModelConfig config_;
  ParameterLayout layout_;
  // The model and its ZeRO state, on the CPU or the GPU.
  std::unique_ptr<TrainingState> state_;
  std::vector<uint8_t> decay_, update_;  // over the range this rank updates
  int64_t rss_outside_state_ = 0;
  int64_t source_bytes_read_ = 0;  // of the model or checkpoint, to start
  int64_t start_peak_ = 0;         // resident peak when the state was loaded
  int64_t trained_values_ = 0;
  std::unique_ptr<TokenBatches> batches_;
  std::vector<int32_t> valid_;
  DataCursor cursor_;
  int64_t step_ = 0, bad_steps_ = 0;
  size_t stage_ = 0;  // the stage the loop is in
  std::vector<Metric> history_;
  comm::Traffic validation_traffic_;
};

}  // namespace

TrainOutcome train(const Experiment& experiment, bool resume, int64_t stop_after, comm::Communicator* comm) {
  std::unique_ptr<comm::Communicator> alone;
  if (comm == nullptr) comm = (alone = std::make_unique<comm::SingleCommunicator>()).get();
  comm->set_timeout_seconds(experiment.timeout_s);
  // Setup errors (a bad file, a missing checkpoint on one node) are agreed on, so that every rank
  // exits with the same message instead of leaving the others waiting in a collective.
  std::unique_ptr<Run> run;
  std::string error;
  try {
    run = std::make_unique<Run>(experiment, *comm, resume);
  } catch (const comm::JobError&) {
    throw;  // already agreed on (inside the setup, e.g. by the NCCL communicator)
  } catch (const Error& e) {
    error = e.what();
  }
  comm->agree(error);
  return run->run(stop_after);
}

}  // namespace dj
