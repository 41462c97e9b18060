#include "trainer/train/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/checkpoint/native.h"
#include "trainer/data/token_stream.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/evaluate.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/init.h"
#include "trainer/model/source.h"
#include "trainer/optim/adamw.h"
#include "trainer/report/plot.h"
#include "trainer/train/token_batches.h"

namespace dj {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> stop_requested{false};
extern "C" void on_stop_signal(int) { stop_requested = true; }

// Installs SIGINT/SIGTERM handlers for the lifetime of a run and restores the previous ones.
class StopSignals {
 public:
  StopSignals() {
    stop_requested = false;
    struct sigaction action {};
    action.sa_handler = on_stop_signal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~StopSignals() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

const std::regex kCheckpointName(R"(ckpt-(\d{8})\.h5)");

struct Metric {
  int64_t step;
  double loss, lr, grad_norm, tokens_per_s;
};

std::string duration_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}h{:02d}m", s / 3600, (s % 3600) / 60);
  if (s >= 60) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}s", s);
}

class Run {
 public:
  Run(const Experiment& e, bool resume) : e_(e) {
    if (e_.precision != "f32")
      fail("precision {} needs the CUDA backend; the CPU trains in f32 (set precision: f32)", e_.precision);
    fs::create_directories(e_.out_dir);
    fs::path from;
    if (resume) {
      from = latest_checkpoint(e_.out_dir);
      if (from.empty()) spdlog::warn("--resume: no checkpoint in {}; starting from {}", e_.out_dir, e_.model_source);
    }
    ModelSource source = from.empty() ? initial_source() : read_model_source(from);
    prepare_attention(source);
    model_ = std::make_unique<GPTNeoX<float>>(source.config);
    model_->load(source.tensors, source.path.string());
    const auto n = static_cast<size_t>(model_->layout().total());
    m_.assign(n, 0.0f);
    v_.assign(n, 0.0f);
    build_masks();
    if (!from.empty()) restore(source, from);
    else std::ofstream(metrics_path(), std::ios::trunc);

    if (e_.order == "pythia" && !e_.train_tokens.ends_with(".npy")) {
      // Pythia-scale data stays memory-mapped; ids are checked as each batch is drawn.
      std::vector<std::string> shards;
      std::stringstream in(e_.train_tokens);
      for (std::string prefix; std::getline(in, prefix, ',');) shards.push_back(prefix);
      batches_ = std::make_unique<TokenBatches>(IndexedDataset::open_shards(shards), e_.seq_len);
    } else {
      std::vector<int32_t> train_tokens = read_token_stream(e_.train_tokens);
      check_vocabulary(train_tokens, e_.train_tokens);
      batches_ = std::make_unique<TokenBatches>(std::move(train_tokens), e_.seq_len, e_.seed, e_.order == "pythia");
    }
    if (!e_.valid_tokens.empty()) {
      valid_ = read_token_stream(e_.valid_tokens);
      check_vocabulary(valid_, e_.valid_tokens);
    }
  }

  TrainOutcome run(int64_t stop_after) {
    StopSignals signals;
    const ModelConfig& c = model_->config();
    spdlog::info("model: {} layers, hidden {}, {} attention, {:.2f}M parameters ({:.2f}M trained)", c.num_layers,
                 c.hidden_size, c.is_dijiang() ? "DiJiang" : "softmax", static_cast<double>(c.parameter_count()) / 1e6,
                 static_cast<double>(trained_values_) / 1e6);
    spdlog::info("data: {} samples of {} tokens; {} tokens per step; steps {} -> {}", batches_->samples(),
                 e_.seq_len + 1, e_.tokens_per_step(), step_, e_.steps);
    TrainOutcome outcome;
    const auto start = std::chrono::steady_clock::now();
    const int64_t first_step = step_;
    std::vector<int32_t> batch(static_cast<size_t>(e_.micro_batch * batches_->sample_tokens()));
    while (step_ < e_.steps) {
      const auto step_start = std::chrono::steady_clock::now();
      model_->zero_gradients();
      double loss = 0.0;
      for (int64_t a = 0; a < e_.grad_accum; ++a) {
        batches_->next(batch.data(), e_.micro_batch, cursor_);
        // Streamed data is checked as it arrives; in-memory data was checked once at start.
        if (batches_->streamed()) check_vocabulary(batch, e_.train_tokens);
        loss += model_->forward(batch.data(), e_.micro_batch, batches_->sample_tokens(), true);
        model_->backward();
      }
      loss /= static_cast<double>(e_.grad_accum);
      std::vector<float>& grads = model_->gradients();
      const float accum_scale = 1.0f / static_cast<float>(e_.grad_accum);
      for (size_t i = 0; i < grads.size(); ++i) grads[i] = update_[i] ? grads[i] * accum_scale : 0.0f;
      const double norm = global_norm(grads.data(), static_cast<int64_t>(grads.size()));
      const double lr = learning_rate(step_, e_.lr, e_.min_lr, e_.warmup, e_.steps);
      if (!std::isfinite(loss) || !std::isfinite(norm)) {
        ++bad_steps_;
        spdlog::warn("step {}: non-finite {} ({}); update skipped ({} in a row)", step_ + 1,
                     std::isfinite(loss) ? "gradient norm" : "loss", std::isfinite(loss) ? norm : loss, bad_steps_);
      } else {
        bad_steps_ = 0;
        if (e_.grad_clip > 0) clip_by_global_norm(grads.data(), static_cast<int64_t>(grads.size()), norm, e_.grad_clip);
        adamw_step(model_->parameters().data(), m_.data(), v_.data(), grads.data(), decay_.data(), update_.data(),
                   static_cast<int64_t>(grads.size()), step_ + 1, lr,
                   AdamWConfig{e_.beta1, e_.beta2, e_.eps, e_.weight_decay});
      }
      ++step_;
      const double step_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
      const double tokens_per_s = static_cast<double>(e_.tokens_per_step()) / step_seconds;
      record({step_, loss, lr, norm, tokens_per_s});
      outcome.last_loss = loss;
      {
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double per_step = elapsed / static_cast<double>(step_ - first_step);
        const std::string status =
            fmt::format("step {}/{} | loss {:.4f} | lr {:.3e} | grad norm {:.3f} | {:.0f} tok/s | ETA {}", step_,
                        e_.steps, loss, lr, norm, tokens_per_s,
                        duration_text(per_step * static_cast<double>(e_.steps - step_)));
        if (step_ % e_.log_every == 0 || step_ == e_.steps) {
          if (progress_on_terminal_) std::fputs("\r\033[K", stderr);
          spdlog::info("{}", status);
        } else if (progress_on_terminal_) {
          // On a terminal a bar between the logged lines shows every step.
          constexpr int kWidth = 30;
          const auto filled = static_cast<int>(kWidth * step_ / e_.steps);
          std::fprintf(stderr, "\r\033[K[%s%s] %s", std::string(static_cast<size_t>(filled), '#').c_str(),
                       std::string(static_cast<size_t>(kWidth - filled), '.').c_str(), status.c_str());
          std::fflush(stderr);
        }
      }
      if (e_.eval_every > 0 && step_ % e_.eval_every == 0) validate();
      const bool stopping = stop_requested.load() || (stop_after > 0 && step_ - first_step >= stop_after);
      if (bad_steps_ >= e_.max_bad_steps) {
        outcome.checkpoint = save();
        fail("{} consecutive steps had a non-finite loss or gradient; stopped after writing {}", bad_steps_,
             outcome.checkpoint.string());
      }
      if (stopping || step_ % e_.checkpoint_every == 0 || step_ == e_.steps) {
        if (step_ % e_.checkpoint_every == 0 || step_ == e_.steps) validate();
        outcome.checkpoint = save();
      }
      if (stopping) {
        outcome.interrupted = stop_requested.load();
        if (outcome.interrupted)
          spdlog::warn("stop requested: checkpoint {} written at step {}", outcome.checkpoint.string(), step_);
        break;
      }
    }
    outcome.step = step_;
    return outcome;
  }

 private:
  // model.source is a model, or a GPT-NeoX config.json to train from scratch (weights from
  // initial_tensors, seeded by the experiment's seed).
  ModelSource initial_source() const {
    const fs::path path = e_.model_source;
    if (!(fs::is_regular_file(path) && path.extension() == ".json")) return read_model_source(path);
    std::ifstream in(path);
    nlohmann::json json = nlohmann::json::parse(in, nullptr, false);
    if (json.is_discarded()) fail("{}: bad JSON", path.string());
    ModelSource source;
    source.path = path;
    source.hf_config = json;
    source.config = ModelConfig::from_hf_json(json, path.string());
    if (source.config.is_dijiang()) fail("{}: a config to train from scratch must have softmax attention", path.string());
    source.tensors = initial_tensors(source.config, e_.seed);
    spdlog::info("initialised a fresh model from {} (seed {})", path.string(), e_.seed);
    return source;
  }

  void prepare_attention(ModelSource& source) {
    if (e_.attention == "softmax" && source.config.is_dijiang())
      fail("model.attention is softmax but {} has DiJiang attention", source.path.string());
    if (e_.attention == "dijiang" && !source.config.is_dijiang()) {
      convert_to_dijiang(source, e_.dijiang);
      spdlog::info("converted {} to DiJiang attention (sampling {}, seed {})", source.path.string(),
                   e_.dijiang.sampling, e_.dijiang.seed);
    }
  }

  void build_masks() {
    decay_.assign(m_.size(), 0);
    update_.assign(m_.size(), 0);
    trained_values_ = 0;
    for (const auto& view : model_->layout().views()) {
      // Pythia decays matrices (embeddings included), not biases, norms or other 1-D tensors.
      const bool decay = view.shape.size() >= 2;
      bool train = view.trainable;
      for (const auto& pattern : e_.freeze)
        if (matches_pattern(pattern, view.name)) train = false;
      std::fill_n(decay_.begin() + view.offset, view.numel(), static_cast<uint8_t>(decay));
      std::fill_n(update_.begin() + view.offset, view.numel(), static_cast<uint8_t>(train));
      if (train) trained_values_ += view.numel();
    }
  }

  void check_vocabulary(const std::vector<int32_t>& tokens, const std::string& file) const {
    const int64_t vocab = model_->config().vocab_size;
    for (size_t i = 0; i < tokens.size(); ++i)
      if (tokens[i] >= vocab) fail("{}: token id {} at index {} is not below the model's vocab_size {}", file, tokens[i], i, vocab);
  }

  fs::path metrics_path() const { return fs::path(e_.out_dir) / "metrics.jsonl"; }

  void record(const Metric& metric) {
    history_.push_back(metric);
    std::ofstream out(metrics_path(), std::ios::app);
    out << nlohmann::json{{"step", metric.step}, {"loss", metric.loss}, {"lr", metric.lr},
                          {"grad_norm", metric.grad_norm}, {"tokens_per_s", metric.tokens_per_s}}
               .dump()
        << "\n";
  }

  // Mean loss over consecutive windows of seq_len + 1 validation tokens, as `dijiang eval` cuts them.
  void validate() {
    if (valid_.size() < 2) return;
    const EvalResult r = evaluate_windows(*model_, valid_, e_.seq_len + 1, e_.micro_batch);
    const double loss = r.loss_sum / static_cast<double>(r.predicted);
    spdlog::info("step {}: validation loss {:.4f}, perplexity {:.2f}", step_, loss, std::exp(loss));
    std::ofstream(metrics_path(), std::ios::app)
        << nlohmann::json{{"step", step_}, {"valid_loss", loss}, {"valid_ppl", std::exp(loss)}}.dump() << "\n";
  }

  fs::path save() {
    NativeCheckpoint checkpoint;
    checkpoint.config = model_->config().to_hf_json();
    checkpoint.metadata = {{"kind", "training"},
                           {"step", step_},
                           {"data_epoch", cursor_.epoch},
                           {"data_position", cursor_.position},
                           {"bad_steps", bad_steps_},
                           {"experiment", experiment_to_yaml(e_)}};
    checkpoint.tensors = model_->to_tensors(DType::F32);
    for (const auto& view : model_->layout().views()) {
      Tensor m(DType::F32, view.shape), v(DType::F32, view.shape);
      std::memcpy(m.bytes(), m_.data() + view.offset, m.nbytes());
      std::memcpy(v.bytes(), v_.data() + view.offset, v.nbytes());
      checkpoint.tensors.emplace("optimizer.m." + view.name, std::move(m));
      checkpoint.tensors.emplace("optimizer.v." + view.name, std::move(v));
    }
    const fs::path path = fs::path(e_.out_dir) / fmt::format("ckpt-{:08d}.h5", step_);
    write_native_checkpoint(path, checkpoint);
    prune();
    plot();
    return path;
  }

  void prune() const {
    std::vector<fs::path> checkpoints;
    for (const auto& entry : fs::directory_iterator(e_.out_dir))
      if (std::regex_match(entry.path().filename().string(), kCheckpointName)) checkpoints.push_back(entry.path());
    std::sort(checkpoints.begin(), checkpoints.end());
    for (size_t i = 0; i + static_cast<size_t>(e_.keep) < checkpoints.size(); ++i) fs::remove(checkpoints[i]);
  }

  void plot() const {
    PlotSeries loss{"training loss", {}, {}}, lr{"learning rate", {}, {}};
    for (const Metric& m : history_) {
      loss.x.push_back(static_cast<double>(m.step));
      loss.y.push_back(m.loss);
      lr.x.push_back(static_cast<double>(m.step));
      lr.y.push_back(m.lr);
    }
    if (history_.size() < 2) return;
    write_line_plot(fs::path(e_.out_dir) / "loss.png", {"Training loss", "step", "loss (nats/token)"}, {loss});
    write_line_plot(fs::path(e_.out_dir) / "lr.png", {"Learning rate", "step", "learning rate"}, {lr});
  }

  // Restores the optimizer moments, step, data cursor and metric history from a checkpoint.
  void restore(const ModelSource& source, const fs::path& from) {
    const nlohmann::json& meta = source.metadata;
    if (meta.value("kind", "") != "training")
      fail("{}: not a training checkpoint (no optimizer state)", from.string());
    for (const auto& view : model_->layout().views()) {
      for (auto [prefix, buffer] : {std::pair{"optimizer.m.", &m_}, std::pair{"optimizer.v.", &v_}}) {
        const auto it = source.optimizer_state.find(prefix + view.name);
        if (it == source.optimizer_state.end() || it->second.shape() != view.shape || it->second.dtype() != DType::F32)
          fail("{}: optimizer state '{}{}' is missing or malformed", from.string(), prefix, view.name);
        std::memcpy(buffer->data() + view.offset, it->second.bytes(), it->second.nbytes());
      }
    }
    step_ = meta.at("step").get<int64_t>();
    cursor_ = {meta.at("data_epoch").get<int64_t>(), meta.at("data_position").get<int64_t>()};
    bad_steps_ = meta.value("bad_steps", int64_t{0});
    // Keep the metrics up to the resumed step, so that curves continue without duplicates.
    std::vector<std::string> kept;
    std::ifstream in(metrics_path());
    for (std::string line; std::getline(in, line);) {
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || j.value("step", int64_t{0}) > step_) continue;
      kept.push_back(line);
      if (j.contains("loss"))
        history_.push_back({j["step"].get<int64_t>(), j["loss"].get<double>(), j["lr"].get<double>(),
                            j["grad_norm"].get<double>(), j["tokens_per_s"].get<double>()});
    }
    in.close();
    std::ofstream out(metrics_path(), std::ios::trunc);
    for (const auto& line : kept) out << line << "\n";
    spdlog::info("resumed from {} at step {} (data epoch {}, position {})", from.string(), step_, cursor_.epoch,
                 cursor_.position);
  }

  Experiment e_;
  const bool progress_on_terminal_ = isatty(STDERR_FILENO) != 0;
  std::unique_ptr<GPTNeoX<float>> model_;
  std::vector<float> m_, v_;
  std::vector<uint8_t> decay_, update_;
  int64_t trained_values_ = 0;
  std::unique_ptr<TokenBatches> batches_;
  std::vector<int32_t> valid_;
  DataCursor cursor_;
  int64_t step_ = 0, bad_steps_ = 0;
  std::vector<Metric> history_;
};

}  // namespace

fs::path latest_checkpoint(const fs::path& out_dir) {
  std::error_code error;
  fs::path latest;
  if (!fs::is_directory(out_dir, error)) return latest;
  for (const auto& entry : fs::directory_iterator(out_dir, error))
    if (std::regex_match(entry.path().filename().string(), kCheckpointName) && entry.path() > latest)
      latest = entry.path();
  return latest;
}

TrainOutcome train(const Experiment& experiment, bool resume, int64_t stop_after) {
  return Run(experiment, resume).run(stop_after);
}

}  // namespace dj
