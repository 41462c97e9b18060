#include "trainer/model/zero_shot.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"

namespace dj {

namespace {

// lm-evaluation-harness's mean_stderr: the sample standard deviation (n − 1) over sqrt(n).
double mean_stderr(const std::vector<double>& values) {
  const auto n = static_cast<double>(values.size());
  if (values.size() < 2) return 0.0;
  double mean = 0.0;
  for (double v : values) mean += v;
  mean /= n;
  double ss = 0.0;
  for (double v : values) ss += (v - mean) * (v - mean);
  return std::sqrt(ss / (n - 1.0) / n);
}

double mean(const std::vector<double>& values) {
  double sum = 0.0;
  for (double v : values) sum += v;
  return values.empty() ? 0.0 : sum / static_cast<double>(values.size());
}

// log softmax(logits)[token], in double, and whether token is the argmax (the first largest).
std::pair<double, bool> log_probability(const std::vector<double>& logits, int32_t token) {
  const double max = *std::max_element(logits.begin(), logits.end());
  double sum = 0.0;
  for (double x : logits) sum += std::exp(x - max);
  const auto argmax = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
  return {logits[static_cast<size_t>(token)] - max - std::log(sum), argmax == token};
}

// The length acc_norm divides by: the choice's characters (Unicode code points, as Python's len)
// less one leading space, the harness's target delimiter, which it does not count (the converted
// task files carry it in the choice).
double choice_length(const std::string& choice) {
  int64_t n = 0;
  for (const char c : choice) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  if (!choice.empty() && choice[0] == ' ') --n;
  return static_cast<double>(std::max<int64_t>(n, 1));
}

}  // namespace

Task read_task_file(const std::string& name, const std::filesystem::path& path, int64_t limit) {
  std::ifstream in(path);
  if (!in) fail("task {}: cannot open {}", name, path.string());
  Task task;
  task.name = name;
  std::string line;
  int64_t number = 0;
  bool kind_known = false;
  while (std::getline(in, line)) {
    ++number;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto where = [&] { return fmt::format("{}:{}", path.string(), number); };
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not a JSON object: {}", where(), e.what());
    }
    if (!j.is_object()) fail("{}: not a JSON object", where());
    for (const auto& [key, value] : j.items())
      if (key != "context" && key != "contexts" && key != "choices" && key != "gold" && key != "continuation")
        fail("{}: unknown key \"{}\" (expected context, choices, gold, continuation or contexts)", where(), key);
    TaskItem item;
    const auto strings = [&](const char* key) {
      if (!j[key].is_array() || j[key].size() < 2) fail("{}: \"{}\" must be an array of at least two strings", where(), key);
      std::vector<std::string> out;
      for (const auto& c : j[key]) {
        if (!c.is_string()) fail("{}: \"{}\" must be an array of strings", where(), key);
        out.push_back(c.get<std::string>());
      }
      return out;
    };
    const bool partial = j.contains("contexts");
    if (partial == j.contains("context"))
      fail("{}: an item needs a string \"context\" (or, for partial scoring, an array \"contexts\")", where());
    if (partial) {
      item.contexts = strings("contexts");
    } else {
      if (!j["context"].is_string()) fail("{}: an item needs a string \"context\"", where());
      item.context = j["context"].get<std::string>();
    }
    const bool mc = j.contains("choices"), cloze = j.contains("continuation") && !partial;
    if (partial && (mc || !j.contains("continuation")))
      fail("{}: a multiple-context item has \"contexts\", one \"continuation\" and \"gold\"", where());
    if (!partial && mc == cloze)
      fail("{}: an item has either \"choices\" and \"gold\" (multiple choice) or \"continuation\" (cloze)", where());
    if (mc) item.choices = strings("choices");
    if (j.contains("continuation")) {
      if (!j["continuation"].is_string()) fail("{}: \"continuation\" must be a string", where());
      item.choices.push_back(j["continuation"].get<std::string>());
      if (item.choices[0].empty()) fail("{}: the continuation is empty", where());
    }
    if (mc || partial) {
      if (!j.contains("gold") || !j["gold"].is_number_integer())
        fail("{}: a multiple-choice item needs an integer \"gold\"", where());
      item.gold = j["gold"].get<int64_t>();
      const size_t options = partial ? item.contexts.size() : item.choices.size();
      if (item.gold < 0 || item.gold >= static_cast<int64_t>(options))
        fail("{}: \"gold\" {} is not the index of one of the {} choices", where(), item.gold, options);
    } else if (j.contains("gold")) {
      fail("{}: a cloze item has no \"gold\"", where());
    }
    if (!kind_known) {
      task.cloze = cloze;
      kind_known = true;
    } else if (task.cloze != cloze) {
      fail("{}: the task mixes multiple-choice and cloze items", where());
    }
    task.items.push_back(std::move(item));
    if (limit > 0 && static_cast<int64_t>(task.items.size()) >= limit) break;
  }
  if (task.items.empty()) fail("task {}: {} holds no items", name, path.string());
  return task;
}

EncodedPair encode_pair(const Tokenizer& tokenizer, const std::string& context, const std::string& continuation,
                        int32_t end_of_text) {
  if (context.empty()) return {{end_of_text}, tokenizer.encode(continuation)};
  // Trailing whitespace (Python's str.rstrip()) moves to the continuation.
  size_t end = context.size();
  while (end > 0 && std::string_view(" \t\n\r\v\f").find(context[end - 1]) != std::string_view::npos) --end;
  const std::string ctx = context.substr(0, end);
  const std::string cont = context.substr(end) + continuation;
  EncodedPair pair;
  pair.context = ctx.empty() ? std::vector<int32_t>{end_of_text} : tokenizer.encode(ctx);
  const std::vector<int32_t> whole = tokenizer.encode(ctx + cont);
  if (ctx.empty()) {
    pair.continuation = whole;
  } else {
    const size_t skip = std::min(pair.context.size(), whole.size());
    pair.continuation.assign(whole.begin() + static_cast<std::ptrdiff_t>(skip), whole.end());
  }
  return pair;
}

std::vector<ChoiceScore> score_item(Decoder& decoder, const EncodedPair* pairs, size_t count) {
  std::vector<ChoiceScore> scores(count);
  if (count == 0) return scores;
  // Choices of one item share the context's tokens (the harness's tokenization depends on the
  // context alone); each continuation runs on its own copy of the context's state.
  size_t longest = 0;
  for (size_t c = 0; c < count; ++c) {
    if (pairs[c].context != pairs[0].context) fail("score_item: the choices of an item have different contexts");
    if (pairs[c].continuation.empty()) fail("score_item: a continuation has no tokens of its own");
    longest = std::max(longest, pairs[c].continuation.size());
  }
  const auto& context = pairs[0].context;
  auto shared = decoder.start(1, static_cast<int64_t>(context.size() + longest));
  const std::vector<double> after_context = shared->feed(context.data(), static_cast<int64_t>(context.size()));
  for (size_t c = 0; c < count; ++c) {
    const auto& cont = pairs[c].continuation;
    std::unique_ptr<Sequences> own = c + 1 < count ? shared->fork() : std::move(shared);
    const std::vector<double>* logits = &after_context;
    ChoiceScore& s = scores[c];
    s.tokens = static_cast<int64_t>(cont.size());
    for (size_t i = 0; i < cont.size(); ++i) {
      const auto [lp, top] = log_probability(*logits, cont[i]);
      s.loglikelihood += lp;
      s.greedy = s.greedy && top;
      if (i + 1 < cont.size()) logits = &own->feed(&cont[i], 1);
    }
  }
  return scores;
}

TaskResult score_task(Decoder& decoder, const Tokenizer& tokenizer, const Task& task, int32_t end_of_text,
                      const std::function<void(int64_t, int64_t)>& progress) {
  const int64_t vocab = decoder.config().vocab_size;
  std::vector<double> acc, acc_norm, loglikelihoods;
  const auto total = static_cast<int64_t>(task.items.size());
  for (int64_t i = 0; i < total; ++i) {
    const TaskItem& item = task.items[static_cast<size_t>(i)];
    std::vector<EncodedPair> pairs;
    const size_t options = item.multiple_contexts() ? item.contexts.size() : item.choices.size();
    for (size_t c = 0; c < options; ++c) {
      const std::string& context = item.multiple_contexts() ? item.contexts[c] : item.context;
      const std::string& choice = item.multiple_contexts() ? item.choices[0] : item.choices[c];
      pairs.push_back(encode_pair(tokenizer, context, choice, end_of_text));
      for (const auto* tokens : {&pairs.back().context, &pairs.back().continuation})
        for (const int32_t id : *tokens)
          if (id < 0 || id >= vocab)
            fail("task {}, item {}: token id {} is outside the model's vocabulary of {}", task.name, i + 1, id, vocab);
      if (pairs.back().continuation.empty())
        fail("task {}, item {}: the choice \"{}\" adds no token to the context", task.name, i + 1, choice);
    }
    std::vector<ChoiceScore> scores;
    if (item.multiple_contexts()) {
      // Each choice is its own context: one pass each.
      for (const EncodedPair& pair : pairs) scores.push_back(score_item(decoder, &pair, 1)[0]);
    } else {
      scores = score_item(decoder, pairs.data(), pairs.size());
    }
    if (item.cloze()) {
      acc.push_back(scores[0].greedy ? 1.0 : 0.0);
      loglikelihoods.push_back(scores[0].loglikelihood);
    } else {
      // The first largest, as numpy's argmax.
      size_t best = 0, best_norm = 0;
      for (size_t c = 1; c < scores.size(); ++c) {
        if (scores[c].loglikelihood > scores[best].loglikelihood) best = c;
        const auto norm = [&](size_t k) {
          return item.multiple_contexts() ? scores[k].loglikelihood
                                          : scores[k].loglikelihood / choice_length(item.choices[k]);
        };
        if (norm(c) > norm(best_norm)) best_norm = c;
      }
      acc.push_back(static_cast<int64_t>(best) == item.gold ? 1.0 : 0.0);
      acc_norm.push_back(static_cast<int64_t>(best_norm) == item.gold ? 1.0 : 0.0);
    }
    if (progress) progress(i + 1, total);
  }
  TaskResult r;
  r.n = total;
  r.cloze = task.cloze;
  r.acc = mean(acc);
  r.acc_stderr = mean_stderr(acc);
  if (task.cloze) {
    r.perplexity = std::exp(-mean(loglikelihoods));
  } else {
    r.acc_norm = mean(acc_norm);
    r.acc_norm_stderr = mean_stderr(acc_norm);
  }
  return r;
}

}  // namespace dj
