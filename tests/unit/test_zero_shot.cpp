// Zero-shot scoring (trainer/model/zero_shot.h): task files are validated line by line, pairs are
// tokenized as lm-evaluation-harness does, and a choice's log-likelihood equals minus the sum of
// the full forward pass's token losses over the continuation (fp64), for softmax and DiJiang
// models, with the context's state computed once and forked for each choice.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fixture_paths.h"
#include "kernels/core/error.h"
#include "model_test_support.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/source.h"
#include "trainer/model/zero_shot.h"

namespace dj {
namespace {

std::filesystem::path write_lines(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::temp_directory_path() / ("dj_zero_shot_" + name + ".jsonl");
  std::ofstream(path) << text;
  return path;
}

void expect_error(const std::string& text, const std::string& needle) {
  const auto path = write_lines("bad", text);
  try {
    read_task_file("t", path);
    ADD_FAILURE() << "accepted: " << text;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
}

TEST(ZeroShot, ReadsAndValidatesTaskFiles) {
  const auto path = write_lines("good", R"({"context": "a", "choices": [" b", " c"], "gold": 1}

{"context": "", "choices": [" x", " y", " z"], "gold": 0}
{"context": "q", "choices": [" r", " s"], "gold": 0}
)");
  const Task all = read_task_file("good", path);
  ASSERT_EQ(all.items.size(), 3u);
  EXPECT_FALSE(all.cloze);
  EXPECT_EQ(all.items[1].choices.size(), 3u);
  EXPECT_EQ(all.items[0].gold, 1);
  EXPECT_EQ(read_task_file("good", path, 2).items.size(), 2u);
  std::filesystem::remove(path);
  const auto cloze = write_lines("cloze", R"({"context": "a b", "continuation": " c"})" "\n");
  EXPECT_TRUE(read_task_file("c", cloze).cloze);
  std::filesystem::remove(cloze);

  const auto partial = write_lines("partial", R"({"contexts": ["the man", "the end"], "continuation": " is in", "gold": 1})" "\n");
  const Task p = read_task_file("p", partial);
  ASSERT_EQ(p.items.size(), 1u);
  EXPECT_TRUE(p.items[0].multiple_contexts());
  EXPECT_FALSE(p.cloze);
  EXPECT_EQ(p.items[0].choices, std::vector<std::string>{" is in"});
  std::filesystem::remove(partial);
  expect_error("{\"contexts\": [\"a\", \"b\"], \"continuation\": \" c\", \"gold\": 2}\n", "\"gold\" 2 is not the index");
  expect_error("{\"contexts\": [\"a\", \"b\"], \"choices\": [\"x\", \"y\"], \"gold\": 0}\n", "a multiple-context item has");
  expect_error("{\"context\": \"a\", \"contexts\": [\"a\", \"b\"], \"continuation\": \" c\", \"gold\": 0}\n", "an item needs a string");
  expect_error("{\"context\": \"a\", \"choices\": [\" b\", \" c\"], \"gold\": 2}\n", ":1: \"gold\" 2 is not the index");
  expect_error("\n{\"context\": \"a\"}\n", ":2: an item has either");
  expect_error("{\"context\": \"a\", \"continuation\": \" b\"}\n{\"context\": \"a\", \"choices\": [\"x\", \"y\"], \"gold\": 0}\n",
               ":2: the task mixes");
  expect_error("{\"context\": \"a\", \"continuation\": \" b\", \"label\": 1}\n", "unknown key \"label\"");
  expect_error("{\"context\": \"a\", \"choices\": [\"x\"], \"gold\": 0}\n", "at least two strings");
  expect_error("{\"context\": 3, \"continuation\": \"x\"}\n", "a string \"context\"");
  expect_error("not json\n", ":1: not a JSON object");
  expect_error("", "holds no items");
  EXPECT_THROW(read_task_file("t", "/nonexistent/task.jsonl"), Error);
}

TEST(ZeroShot, EncodesPairsAsTheHarness) {
  const Tokenizer tok = Tokenizer::from_file(test::source_dir() / "data" / "tokenizer" / "tokenizer.json");
  // The context's trailing space moves to the continuation.
  EncodedPair p = encode_pair(tok, "Hello, I am ", "here", 0);
  EXPECT_EQ(p.context, tok.encode("Hello, I am"));
  EXPECT_EQ(p.continuation, tok.encode(" here"));
  // Tokens spanning the boundary: the continuation is what follows the context's tokens in the whole.
  p = encode_pair(tok, "Hello", "world", 0);
  const std::vector<int32_t> whole = tok.encode("Helloworld");
  EXPECT_EQ(p.context, tok.encode("Hello"));
  EXPECT_EQ(p.continuation, std::vector<int32_t>(whole.begin() + static_cast<std::ptrdiff_t>(p.context.size()), whole.end()));
  // An empty context is the end-of-text token.
  p = encode_pair(tok, "", " the end", 7);
  EXPECT_EQ(p.context, std::vector<int32_t>{7});
  EXPECT_EQ(p.continuation, tok.encode(" the end"));
}

// Random fp64 models (decay from the reference schedule).
ModelSource random_source(const ModelConfig& config, uint64_t seed) {
  GPTNeoX<double> model(config);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 0.4);
  for (auto& v : model.parameters()) v = normal(rng);
  for (const auto& view : model.layout().views())
    if (view.name.ends_with("log_gamma")) {
      const std::vector<double> schedule = reference_log_gamma(view.numel());
      std::copy(schedule.begin(), schedule.end(), model.parameters().begin() + view.offset);
    }
  ModelSource source;
  source.config = config;
  source.path = "random model";
  source.tensors = model.to_tensors(DType::F64);
  return source;
}

TEST(ZeroShot, LogLikelihoodsAreMinusTheForwardsTokenLosses) {
  ModelConfig dijiang = test::tiny_config(false, "gelu");
  dijiang.attention = AttentionKind::DiJiang;
  dijiang.dijiang.chunk = 3;
  for (const ModelConfig& config : {test::tiny_config(true, "gelu"), dijiang}) {
    SCOPED_TRACE(config.is_dijiang() ? "dijiang" : "softmax");
    ModelSource source = random_source(config, 21);
    GPTNeoX<double> reference(config);
    reference.load(source.tensors, "random model");
    ModelDecoder<CpuOps<double>> decoder(source);
    const std::vector<int32_t> context = {4, 9, 1, 17, 3, 3, 12};
    const std::vector<std::vector<int32_t>> continuations = {{5}, {8, 2, 22}, {0, 0, 13, 6, 11}};
    std::vector<EncodedPair> pairs;
    for (const auto& c : continuations) pairs.push_back({context, c});
    const std::vector<ChoiceScore> scores = score_item(decoder, pairs.data(), pairs.size());
    const auto loss_sum = [&](const std::vector<int32_t>& ids) {
      return reference.forward_loss_sum(ids.data(), 1, static_cast<int64_t>(ids.size())).sum;
    };
    const double context_loss = loss_sum(context);
    for (size_t c = 0; c < continuations.size(); ++c) {
      std::vector<int32_t> whole = context;
      whole.insert(whole.end(), continuations[c].begin(), continuations[c].end());
      const double expected = -(loss_sum(whole) - context_loss);
      EXPECT_NEAR(scores[c].loglikelihood, expected, 1e-10 * std::max(1.0, std::abs(expected))) << c;
      EXPECT_EQ(scores[c].tokens, static_cast<int64_t>(continuations[c].size()));
      // Greedy: every continuation token is the argmax of the full forward's logits.
      reference.forward(whole.data(), 1, static_cast<int64_t>(whole.size()));
      bool greedy = true;
      const int64_t V = config.vocab_size;
      for (size_t i = 0; i < continuations[c].size(); ++i) {
        const auto row = reference.logits().begin() + static_cast<std::ptrdiff_t>((context.size() + i - 1) * V);
        greedy = greedy && std::max_element(row, row + V) - row == continuations[c][i];
      }
      EXPECT_EQ(scores[c].greedy, greedy) << c;
    }
  }
}


// tests/fixtures/tasks: per-item log-likelihoods and scores of data/tiny-neox computed with
// Hugging Face transformers in float64 (tests/fixtures/make_task_fixtures.py). acc_norm is the
// harness's, whose length leaves out the target delimiter (expected.json's
// acc_norm_no_delimiter; its acc_norm counts the delimiter).
TEST(ZeroShot, MatchesTransformersOnTheFixtureTasks) {
  const nlohmann::json expected = [] {
    std::ifstream in(test::fixture("tasks/expected.json"));
    return nlohmann::json::parse(in);
  }();
  const Tokenizer tok = Tokenizer::from_file(test::source_dir() / "data" / "tokenizer" / "tokenizer.json");
  ModelSource source = read_model_source(test::source_dir() / "data" / "tiny-neox");
  ModelDecoder<CpuOps<double>> decoder(source);
  for (const std::string name : {"mc", "cloze"}) {
    SCOPED_TRACE(name);
    const nlohmann::json& e = expected["tasks"][name];
    const Task task = read_task_file(name, test::fixture("tasks/" + name + ".jsonl"));
    ASSERT_EQ(static_cast<int64_t>(task.items.size()), e["n"].get<int64_t>());
    for (size_t i = 0; i < task.items.size(); ++i) {
      const TaskItem& item = task.items[i];
      const nlohmann::json& choices = item.cloze() ? nlohmann::json::array({e["items"][i]}) : e["items"][i]["choices"];
      std::vector<EncodedPair> pairs;
      for (size_t c = 0; c < item.choices.size(); ++c) {
        pairs.push_back(encode_pair(tok, item.context, item.choices[c], 0));
        ASSERT_EQ(pairs.back().context, choices[c]["context_tokens"].get<std::vector<int32_t>>()) << i << "/" << c;
        ASSERT_EQ(pairs.back().continuation, choices[c]["continuation_tokens"].get<std::vector<int32_t>>()) << i << "/" << c;
      }
      const std::vector<ChoiceScore> scores = score_item(decoder, pairs.data(), pairs.size());
      for (size_t c = 0; c < scores.size(); ++c) {
        EXPECT_NEAR(scores[c].loglikelihood, choices[c]["loglikelihood"].get<double>(), 1e-9) << i << "/" << c;
        EXPECT_EQ(scores[c].greedy, choices[c]["is_greedy"].get<bool>()) << i << "/" << c;
      }
    }
    const TaskResult r = score_task(decoder, tok, task, 0);
    EXPECT_EQ(r.n, e["n"].get<int64_t>());
    EXPECT_DOUBLE_EQ(r.acc, e["acc"].get<double>());
    EXPECT_NEAR(r.acc_stderr, e["acc_stderr"].get<double>(), 1e-12);
    if (name == "mc") {
      EXPECT_DOUBLE_EQ(r.acc_norm, e["acc_norm_no_delimiter"].get<double>());
      EXPECT_NEAR(r.acc_norm_stderr, e["acc_norm_no_delimiter_stderr"].get<double>(), 1e-12);
    } else {
      EXPECT_NEAR(r.perplexity, e["perplexity"].get<double>(), 1e-9 * e["perplexity"].get<double>());
    }
  }
}

// Multiple-context items (the harness's partial scoring): each context scores the shared
// continuation in its own pass, and acc takes the best.
TEST(ZeroShot, MultipleContextItemsScoreTheSharedContinuation) {
  const Tokenizer tok = Tokenizer::from_file(test::source_dir() / "data" / "tokenizer" / "tokenizer.json");
  ModelSource source = read_model_source(test::source_dir() / "data" / "tiny-neox");
  ModelDecoder<CpuOps<double>> decoder(source);
  Task task;
  task.name = "partial";
  const std::vector<std::vector<std::string>> contexts = {{"the man is", "the end is", "it is"}, {"we do not see", "we see"}};
  const std::vector<int64_t> golds = {2, 0};
  std::vector<double> expected_acc;
  for (size_t i = 0; i < contexts.size(); ++i) {
    TaskItem item;
    item.contexts = contexts[i];
    item.choices = {" in the end"};
    item.gold = golds[i];
    std::vector<double> ll;
    for (const std::string& context : item.contexts) {
      const EncodedPair pair = encode_pair(tok, context, item.choices[0], 0);
      ll.push_back(score_item(decoder, &pair, 1)[0].loglikelihood);
    }
    expected_acc.push_back(std::max_element(ll.begin(), ll.end()) - ll.begin() == item.gold ? 1.0 : 0.0);
    task.items.push_back(item);
  }
  const TaskResult r = score_task(decoder, tok, task, 0);
  EXPECT_DOUBLE_EQ(r.acc, (expected_acc[0] + expected_acc[1]) / 2);
  EXPECT_DOUBLE_EQ(r.acc_norm, r.acc);
}

}  // namespace
}  // namespace dj
