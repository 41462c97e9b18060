// Zero-shot task scoring with lm-evaluation-harness's log-likelihood definitions (docs/evaluation.md).
//
// A task file holds one JSON object per line: a multiple-choice item
//   {"context": "...", "choices": ["...", "..."], "gold": 1}
// or a cloze item
//   {"context": "...", "continuation": "..."}
// or a multiple-context item (the harness's partial scoring of WinoGrande and WSC273: each choice
// is a context, and only the continuation they share is scored)
//   {"contexts": ["...", "..."], "continuation": "...", "gold": 0}
// A choice or continuation is appended to the context as it is (the file carries any delimiter).
// Each (context, continuation) pair is tokenized as the harness does: trailing spaces of the context
// move to the continuation, context and context + continuation are encoded separately, and the
// continuation's tokens are those of the whole after the context's (an empty context becomes the
// end-of-text token). Its log-likelihood is the sum of the log-probabilities of the continuation's
// tokens, the first predicted from the context's last token.
#pragma once
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "trainer/data/tokenizer.h"
#include "trainer/model/decoder.h"

namespace dj {

struct TaskItem {
  std::string context;
  std::vector<std::string> choices;   // a cloze or multiple-context item: its one continuation
  std::vector<std::string> contexts;  // a multiple-context item: one context per choice
  int64_t gold = -1;                  // -1: a cloze item
  bool cloze() const { return gold < 0; }
  bool multiple_contexts() const { return !contexts.empty(); }
};

struct Task {
  std::string name;
  std::vector<TaskItem> items;
  bool cloze = false;  // a task is all cloze items, or all choices (by continuation or by context)
};

// Reads a task file (at most `limit` items when limit > 0); a malformed line is an error naming the
// file and the line.
Task read_task_file(const std::string& name, const std::filesystem::path& path, int64_t limit = 0);

// The harness's tokenization of a pair: (context tokens, continuation tokens).
struct EncodedPair {
  std::vector<int32_t> context, continuation;
};
EncodedPair encode_pair(const Tokenizer& tokenizer, const std::string& context, const std::string& continuation,
                        int32_t end_of_text);

struct ChoiceScore {
  double loglikelihood = 0.0;
  bool greedy = true;  // every continuation token is the argmax of its prediction
  int64_t tokens = 0;
};

// The scores of every choice of an item: the context is fed once and its decoding state forked
// for each choice (for DiJiang models the context's recurrent state is computed once).
std::vector<ChoiceScore> score_item(Decoder& decoder, const EncodedPair* pairs, size_t count);

struct TaskResult {
  int64_t n = 0;
  double acc = 0.0, acc_stderr = 0.0;
  double acc_norm = 0.0, acc_norm_stderr = 0.0;  // multiple choice (multiple contexts: acc's, as the
                                                 // continuation is shared)
  double perplexity = 0.0;                       // cloze
  bool cloze = false;
};

// Scores a task; `progress(done, total)` is called after each item. Every id must lie below the
// model's vocabulary (an error names the task and the item otherwise).
TaskResult score_task(Decoder& decoder, const Tokenizer& tokenizer, const Task& task, int32_t end_of_text,
                      const std::function<void(int64_t, int64_t)>& progress = {});

}  // namespace dj
