#include "trainer/config/experiment.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <functional>
#include <limits>
#include <sstream>

#include "kernels/core/error.h"

namespace dj {

namespace {

enum class Kind { String, Int, UInt, Float, Bool, StringList };

struct Key {
  std::string path;
  Kind kind;
  std::function<void*(Experiment&)> field;
  std::vector<std::string> choices;  // allowed values of a string key (empty: any)
  bool required = false;
};

const std::vector<Key>& schema() {
  static const std::vector<Key> keys = {
      {"model.source", Kind::String, [](Experiment& e) -> void* { return &e.model_source; }, {}, true},
      {"model.attention", Kind::String, [](Experiment& e) -> void* { return &e.attention; }, {"keep", "softmax", "dijiang"}},
      {"model.dijiang.seed", Kind::UInt, [](Experiment& e) -> void* { return &e.dijiang.seed; }},
      {"model.dijiang.sampling", Kind::String, [](Experiment& e) -> void* { return &e.dijiang.sampling; }, {"qmc", "mc"}},
      {"model.dijiang.chunk", Kind::Int, [](Experiment& e) -> void* { return &e.dijiang.chunk; }},
      {"model.dijiang.form", Kind::String, [](Experiment& e) -> void* { return &e.dijiang.form; },
       {"parallel", "chunkwise", "recurrent"}},
      {"model.dijiang.feature_weights", Kind::Bool, [](Experiment& e) -> void* { return &e.dijiang.feature_weights; }},
      {"model.dijiang.learnable_decay", Kind::Bool, [](Experiment& e) -> void* { return &e.dijiang.learnable_decay; }},
      {"model.dijiang.group_norm_per_head", Kind::Bool,
       [](Experiment& e) -> void* { return &e.dijiang.group_norm_per_head; }},
      {"data.train", Kind::String, [](Experiment& e) -> void* { return &e.train_tokens; }, {}, true},
      {"data.valid", Kind::String, [](Experiment& e) -> void* { return &e.valid_tokens; }},
      {"data.seq_len", Kind::Int, [](Experiment& e) -> void* { return &e.seq_len; }},
      {"data.order", Kind::String, [](Experiment& e) -> void* { return &e.order; }, {"shuffled", "pythia"}},
      {"batch.micro_batch", Kind::Int, [](Experiment& e) -> void* { return &e.micro_batch; }},
      {"batch.grad_accum", Kind::Int, [](Experiment& e) -> void* { return &e.grad_accum; }},
      {"batch.global_tokens", Kind::Int, [](Experiment& e) -> void* { return &e.global_tokens; }},
      {"precision", Kind::String, [](Experiment& e) -> void* { return &e.precision; }, {"f32", "bf16"}},
      {"optimizer.lr", Kind::Float, [](Experiment& e) -> void* { return &e.lr; }},
      {"optimizer.min_lr", Kind::Float, [](Experiment& e) -> void* { return &e.min_lr; }},
      {"optimizer.beta1", Kind::Float, [](Experiment& e) -> void* { return &e.beta1; }},
      {"optimizer.beta2", Kind::Float, [](Experiment& e) -> void* { return &e.beta2; }},
      {"optimizer.eps", Kind::Float, [](Experiment& e) -> void* { return &e.eps; }},
      {"optimizer.weight_decay", Kind::Float, [](Experiment& e) -> void* { return &e.weight_decay; }},
      {"optimizer.grad_clip", Kind::Float, [](Experiment& e) -> void* { return &e.grad_clip; }},
      {"optimizer.freeze", Kind::StringList, [](Experiment& e) -> void* { return &e.freeze; }},
      {"schedule.steps", Kind::Int, [](Experiment& e) -> void* { return &e.steps; }},
      {"schedule.warmup", Kind::Int, [](Experiment& e) -> void* { return &e.warmup; }},
      {"schedule.max_bad_steps", Kind::Int, [](Experiment& e) -> void* { return &e.max_bad_steps; }},
      {"checkpoint.dir", Kind::String, [](Experiment& e) -> void* { return &e.out_dir; }},
      {"checkpoint.every", Kind::Int, [](Experiment& e) -> void* { return &e.checkpoint_every; }},
      {"checkpoint.keep", Kind::Int, [](Experiment& e) -> void* { return &e.keep; }},
      {"logging.every", Kind::Int, [](Experiment& e) -> void* { return &e.log_every; }},
      {"logging.eval_every", Kind::Int, [](Experiment& e) -> void* { return &e.eval_every; }},
      {"distributed.zero_stage", Kind::Int, [](Experiment& e) -> void* { return &e.zero_stage; }},
      {"distributed.timeout_s", Kind::Float, [](Experiment& e) -> void* { return &e.timeout_s; }},
      {"seed", Kind::UInt, [](Experiment& e) -> void* { return &e.seed; }},
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
    fail("{}: '{}' must be {}, got '{}'", where, key.path, kind_name(key.kind),
         node.IsScalar() ? node.Scalar() : std::string(node.IsSequence() ? "a list" : "a mapping"));
  };
  try {
    switch (key.kind) {
      case Kind::String: {
        if (!node.IsScalar()) wrong();
        auto& value = *static_cast<std::string*>(key.field(e));
        value = node.as<std::string>();
        if (!key.choices.empty() && std::find(key.choices.begin(), key.choices.end(), value) == key.choices.end())
          fail("{}: '{}' is '{}', expected one of: {}", where, key.path, value, fmt::join(key.choices, ", "));
        break;
      }
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
    const std::string name = entry.first.as<std::string>();
    const std::string path = prefix.empty() ? name : prefix + "." + name;
    const std::string where = origin(file, entry.first);
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

Experiment load_experiment(const std::filesystem::path& path, const std::vector<std::string>& overrides) {
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
  walk(root, "", file, e, seen);
  for (const std::string& text : overrides) {
    const size_t equals = text.find('=');
    const std::string where = fmt::format("override '{}'", text);
    if (equals == std::string::npos || equals == 0) fail("{}: expected KEY=VALUE", where);
    const std::string key_path = text.substr(0, equals);
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
  check_values(e, file);
  return e;
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
  void emit(YAML::Emitter& out) const {
    out << YAML::BeginMap;
    for (const YamlTree& tree : children) {
      out << YAML::Key << tree.name << YAML::Value;
      if (tree.children.empty())
        out << tree.value;
      else
        tree.emit(out);
    }
    out << YAML::EndMap;
  }
};

}  // namespace

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
  root.emit(out);
  return out.c_str();
}

}  // namespace dj
