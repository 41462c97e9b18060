#include "trainer/checkpoint/torch_pickle.h"

#include <map>
#include <string_view>
#include <unordered_map>
#include <variant>

#include "kernels/core/error.h"

namespace dj::torch_pickle {

namespace {

// A state dict's pickle is a few hundred bytes per tensor; these bounds only stop hostile input
// from exhausting memory.
constexpr size_t kMaxStackDepth = 1u << 18;
constexpr size_t kMaxMemoEntries = 1u << 22;
constexpr size_t kMaxContainers = 1u << 22;

// ---------------------------------------------------------------------------------------------
// Pickle values. Containers live in an arena and values refer to them by index: shared or even
// cyclic references (which BINGET can create) need no reference counting, and destroying a
// deeply nested structure is flat rather than recursive.

struct Global {
  std::string qualified_name;  // "module.name"
};

struct ContainerId {
  size_t index;
};

struct None {};

using Value = std::variant<None, bool, int64_t, double, std::string, Global, StorageRef, TensorRef,
                           ContainerId>;

struct Container {
  enum class Kind { List, Tuple, Dict } kind;
  std::vector<Value> items;  // a dict's keys and values alternate
};

const std::map<std::string, DType, std::less<>>& storage_types() {
  static const std::map<std::string, DType, std::less<>> types = {
      {"torch.DoubleStorage", DType::F64}, {"torch.FloatStorage", DType::F32},
      {"torch.HalfStorage", DType::F16},   {"torch.BFloat16Storage", DType::BF16},
      {"torch.LongStorage", DType::I64},   {"torch.IntStorage", DType::I32},
      {"torch.ShortStorage", DType::I16},  {"torch.CharStorage", DType::I8},
      {"torch.ByteStorage", DType::U8},    {"torch.BoolStorage", DType::BOOL},
  };
  return types;
}

constexpr std::string_view kOrderedDict = "collections.OrderedDict";
constexpr std::string_view kRebuildTensorV2 = "torch._utils._rebuild_tensor_v2";
constexpr std::string_view kRebuildTensor = "torch._utils._rebuild_tensor";

bool is_allowed_global(std::string_view name) {
  return name == kOrderedDict || name == kRebuildTensorV2 || name == kRebuildTensor ||
         storage_types().contains(name);
}

// ---------------------------------------------------------------------------------------------
// The restricted unpickler: the opcodes torch.save emits for a state dict (protocol 2, plus the
// framing and memo opcodes of protocol 4), nothing that can import or call arbitrary code.

namespace op {
constexpr uint8_t MARK = '(', STOP = '.', BININT = 'J', BININT1 = 'K', BININT2 = 'M', NONE = 'N',
                  BINPERSID = 'Q', REDUCE = 'R', BINUNICODE = 'X', APPEND = 'a', BUILD = 'b',
                  GLOBAL = 'c', APPENDS = 'e', BINGET = 'h', LONG_BINGET = 'j', EMPTY_LIST = ']',
                  BINPUT = 'q', LONG_BINPUT = 'r', SETITEM = 's', TUPLE = 't', SETITEMS = 'u',
                  EMPTY_DICT = '}', EMPTY_TUPLE = ')', BINFLOAT = 'G', PROTO = 0x80, TUPLE1 = 0x85,
                  TUPLE2 = 0x86, TUPLE3 = 0x87, NEWTRUE = 0x88, NEWFALSE = 0x89, LONG1 = 0x8a,
                  SHORT_BINUNICODE = 0x8c, BINUNICODE8 = 0x8d, STACK_GLOBAL = 0x93, MEMOIZE = 0x94,
                  FRAME = 0x95;
}  // namespace op

class Unpickler {
 public:
  explicit Unpickler(std::span<const std::byte> data) : data_(data) {}

  // Runs to STOP and returns the state dict's entries in pickle order.
  std::vector<std::pair<std::string, TensorRef>> state_dict() {
    const Value result = run();
    const auto* id = std::get_if<ContainerId>(&result);
    if (!id || containers_[id->index].kind != Container::Kind::Dict)
      fail("the pickled object is not a dict of tensors");
    const std::vector<Value>& items = containers_[id->index].items;
    std::vector<std::pair<std::string, TensorRef>> entries;
    for (size_t i = 0; i < items.size(); i += 2) {
      const auto* name = std::get_if<std::string>(&items[i]);
      if (!name) fail("the state dict has a key that is not a string");
      const auto* tensor = std::get_if<TensorRef>(&items[i + 1]);
      if (!tensor) fail("state dict entry '{}' is not a tensor", *name);
      entries.emplace_back(*name, *tensor);
    }
    return entries;
  }

 private:
  Value run() {
    while (true) {
      opcode_offset_ = pos_;
      const uint8_t code = u8();
      switch (code) {
        case op::PROTO:
          if (const uint8_t version = u8(); version > 5)
            fail("unsupported pickle protocol {}", version);
          break;
        case op::FRAME: le(8); break;  // frame length: the whole pickle is in memory already
        case op::STOP:
          if (stack_.empty()) fail("pickle stops with an empty stack");
          return stack_.back();
        case op::MARK: marks_.push_back(stack_.size()); break;
        case op::GLOBAL: {
          const std::string module = line();
          push(make_global(module + "." + line()));
          break;
        }
        case op::STACK_GLOBAL: {
          const std::string name = pop_as<std::string>("STACK_GLOBAL name");
          const std::string module = pop_as<std::string>("STACK_GLOBAL module");
          push(make_global(module + "." + name));
          break;
        }
        case op::NONE: push(None{}); break;
        case op::NEWTRUE: push(true); break;
        case op::NEWFALSE: push(false); break;
        case op::BININT: push(static_cast<int64_t>(static_cast<int32_t>(le(4)))); break;
        case op::BININT1: push(static_cast<int64_t>(le(1))); break;
        case op::BININT2: push(static_cast<int64_t>(le(2))); break;
        case op::LONG1: push(long1()); break;
        case op::BINFLOAT: push(std::bit_cast<double>(be64())); break;
        case op::SHORT_BINUNICODE: push(bytes(le(1))); break;
        case op::BINUNICODE: push(bytes(le(4))); break;
        case op::BINUNICODE8: push(bytes(le(8))); break;
        case op::EMPTY_TUPLE: push(new_container(Container::Kind::Tuple, {})); break;
        case op::TUPLE1:
        case op::TUPLE2:
        case op::TUPLE3: {
          const size_t n = code - op::TUPLE1 + 1u;
          if (stack_.size() < n + base())
            fail("TUPLE{} at offset {} needs {} stack items", n, opcode_offset_, n);
          std::vector<Value> items(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
          stack_.resize(stack_.size() - n);
          push(new_container(Container::Kind::Tuple, std::move(items)));
          break;
        }
        case op::TUPLE: push(new_container(Container::Kind::Tuple, pop_to_mark())); break;
        case op::EMPTY_LIST: push(new_container(Container::Kind::List, {})); break;
        case op::EMPTY_DICT: push(new_container(Container::Kind::Dict, {})); break;
        case op::APPEND: {
          Value item = pop();
          append(top(), Container::Kind::List, {std::move(item)});
          break;
        }
        case op::APPENDS: {
          std::vector<Value> items = pop_to_mark();
          append(top(), Container::Kind::List, std::move(items));
          break;
        }
        case op::SETITEM: {
          Value value = pop();
          Value key = pop();
          append(top(), Container::Kind::Dict, {std::move(key), std::move(value)});
          break;
        }
        case op::SETITEMS: {
          std::vector<Value> items = pop_to_mark();
          if (items.size() % 2 != 0)
            fail("SETITEMS at offset {} has an odd number of items", opcode_offset_);
          append(top(), Container::Kind::Dict, std::move(items));
          break;
        }
        case op::BINPUT: memo_put(le(1)); break;
        case op::LONG_BINPUT: memo_put(le(4)); break;
        case op::MEMOIZE: memo_put(memo_.size()); break;
        case op::BINGET: memo_get(le(1)); break;
        case op::LONG_BINGET: memo_get(le(4)); break;
        case op::BINPERSID: {
          Value pid = pop();
          push(persistent_load(pid));
          break;
        }
        case op::REDUCE: {
          Value args = pop();
          Value callable = pop();
          push(reduce(callable, args));
          break;
        }
        case op::BUILD: {
          // OrderedDict.__reduce__ passes the instance __dict__ (a state_dict's `_metadata`
          // attribute, or nothing) as the state: irrelevant to the tensors, so it is dropped.
          const Value state = pop();
          const auto* target = std::get_if<ContainerId>(&top());
          const auto* state_id = std::get_if<ContainerId>(&state);
          const bool state_ok =
              std::holds_alternative<None>(state) ||
              (state_id && containers_[state_id->index].kind == Container::Kind::Dict);
          if (!target || containers_[target->index].kind != Container::Kind::Dict || !state_ok)
            fail("BUILD at offset {} is only supported on a dict with a dict or None state",
                 opcode_offset_);
          break;
        }
        default: fail("pickle opcode 0x{:02x} at offset {} is not supported", code, opcode_offset_);
      }
    }
  }

  // --- reading the byte stream ---
  void need(uint64_t n) const {
    if (n > data_.size() - pos_)
      fail("pickle truncated: opcode at offset {} needs {} more bytes", opcode_offset_, n);
  }
  uint8_t u8() {
    need(1);
    return static_cast<uint8_t>(data_[pos_++]);
  }
  uint64_t le(size_t n) {
    need(n);
    uint64_t value = 0;
    for (size_t i = 0; i < n; ++i) value |= static_cast<uint64_t>(data_[pos_ + i]) << (8 * i);
    pos_ += n;
    return value;
  }
  uint64_t be64() {  // BINFLOAT alone is big-endian
    need(8);
    uint64_t value = 0;
    for (size_t i = 0; i < 8; ++i) value = value << 8 | static_cast<uint64_t>(data_[pos_ + i]);
    pos_ += 8;
    return value;
  }
  std::string bytes(uint64_t n) {
    need(n);
    std::string out(reinterpret_cast<const char*>(data_.data() + pos_), n);
    pos_ += n;
    return out;
  }
  std::string line() {
    const size_t start = pos_;
    while (pos_ < data_.size() && data_[pos_] != std::byte{'\n'}) ++pos_;
    if (pos_ == data_.size())
      fail("pickle truncated: GLOBAL at offset {} has no line end", opcode_offset_);
    return std::string(reinterpret_cast<const char*>(data_.data() + start), pos_++ - start);
  }
  // LONG1: a little-endian two's-complement integer of n bytes; state dicts need at most 8.
  int64_t long1() {
    const uint64_t n = le(1);
    if (n > 8) fail("LONG1 integer at offset {} has {} bytes, more than 8", opcode_offset_, n);
    if (n == 0) return 0;
    uint64_t value = le(n);
    if (n < 8 && (value >> (8 * n - 1)) & 1) value |= ~uint64_t{0} << (8 * n);  // sign-extend
    return static_cast<int64_t>(value);
  }

  // --- the stack, marks, memo and containers ---
  // The bottom of the current mark frame: items below it belong to an enclosing MARK.
  size_t base() const { return marks_.empty() ? 0 : marks_.back(); }
  void push(Value value) {
    if (stack_.size() >= kMaxStackDepth) fail("pickle stack deeper than {} items", kMaxStackDepth);
    stack_.push_back(std::move(value));
  }
  Value pop() {
    if (stack_.size() <= base()) fail("pickle stack underflow at offset {}", opcode_offset_);
    Value value = std::move(stack_.back());
    stack_.pop_back();
    return value;
  }
  Value& top() {
    if (stack_.size() <= base()) fail("pickle stack underflow at offset {}", opcode_offset_);
    return stack_.back();
  }
  template <typename T>
  T pop_as(const char* what) {
    Value value = pop();
    T* typed = std::get_if<T>(&value);
    if (!typed) fail("pickle at offset {}: unexpected type for {}", opcode_offset_, what);
    return std::move(*typed);
  }
  std::vector<Value> pop_to_mark() {
    if (marks_.empty()) fail("pickle opcode at offset {} needs a MARK", opcode_offset_);
    const size_t mark = marks_.back();
    marks_.pop_back();
    std::vector<Value> items(
        std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(mark)),
        std::make_move_iterator(stack_.end()));
    stack_.resize(mark);
    return items;
  }
  ContainerId new_container(Container::Kind kind, std::vector<Value> items) {
    if (containers_.size() >= kMaxContainers)
      fail("pickle holds more than {} containers", kMaxContainers);
    containers_.push_back({kind, std::move(items)});
    return {containers_.size() - 1};
  }
  void append(const Value& target, Container::Kind kind, std::vector<Value> items) {
    const auto* id = std::get_if<ContainerId>(&target);
    if (!id || containers_[id->index].kind != kind)
      fail("pickle opcode at offset {} adds items to an object that is not a {}", opcode_offset_,
           kind == Container::Kind::List ? "list" : "dict");
    std::vector<Value>& into = containers_[id->index].items;
    into.insert(into.end(), std::make_move_iterator(items.begin()),
                std::make_move_iterator(items.end()));
  }
  void memo_put(uint64_t index) {
    if (memo_.size() >= kMaxMemoEntries && !memo_.contains(index))
      fail("pickle memo larger than {} entries", kMaxMemoEntries);
    memo_[index] = top();
  }
  void memo_get(uint64_t index) {
    const auto it = memo_.find(index);
    if (it == memo_.end()) fail("pickle memo has no entry {} (offset {})", index, opcode_offset_);
    push(it->second);
  }

  // --- the permitted objects ---
  Global make_global(std::string qualified_name) {
    if (!is_allowed_global(qualified_name))
      fail("pickle global '{}' is not allowed", qualified_name);
    return Global{std::move(qualified_name)};
  }

  const std::vector<Value>& tuple_items(const Value& value, const char* what) const {
    const auto* id = std::get_if<ContainerId>(&value);
    if (!id || containers_[id->index].kind != Container::Kind::Tuple)
      fail("pickle at offset {}: {} is not a tuple", opcode_offset_, what);
    return containers_[id->index].items;
  }
  int64_t integer(const Value& value, const char* what) const {
    const auto* number = std::get_if<int64_t>(&value);
    if (!number) fail("pickle at offset {}: {} is not an integer", opcode_offset_, what);
    return *number;
  }
  Shape integers(const Value& value, const char* what) const {
    Shape out;
    for (const Value& item : tuple_items(value, what)) out.push_back(integer(item, what));
    return out;
  }

  // torch.save's persistent id for a storage: ('storage', storage_type, key, location, numel).
  Value persistent_load(const Value& pid) {
    const std::vector<Value>& items = tuple_items(pid, "persistent id");
    const auto* tag = items.size() == 5 ? std::get_if<std::string>(&items[0]) : nullptr;
    const auto* type = items.size() == 5 ? std::get_if<Global>(&items[1]) : nullptr;
    const auto* key = items.size() == 5 ? std::get_if<std::string>(&items[2]) : nullptr;
    if (!tag || *tag != "storage" || !type || !key)
      fail("pickle at offset {}: persistent id is not ('storage', type, key, location, numel)",
           opcode_offset_);
    const auto dtype = storage_types().find(type->qualified_name);
    if (dtype == storage_types().end())
      fail("pickle at offset {}: '{}' is not a storage type", opcode_offset_, type->qualified_name);
    const int64_t numel = integer(items[4], "storage size");
    if (numel < 0)
      fail("pickle at offset {}: storage '{}' has negative size {}", opcode_offset_, *key, numel);
    return StorageRef{dtype->second, *key, numel};
  }

  Value reduce(const Value& callable, const Value& args_value) {
    const auto* global = std::get_if<Global>(&callable);
    if (!global)
      fail("pickle at offset {}: REDUCE of an object that is not callable", opcode_offset_);
    const std::vector<Value>& args = tuple_items(args_value, "REDUCE arguments");
    const std::string& name = global->qualified_name;
    if (name == kOrderedDict) {
      if (!args.empty())
        fail("pickle at offset {}: OrderedDict with constructor arguments", opcode_offset_);
      return new_container(Container::Kind::Dict, {});
    }
    // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    // _rebuild_tensor(storage, offset, size, stride). The extra arguments do not affect values.
    if (name != kRebuildTensorV2 && name != kRebuildTensor)
      fail("pickle at offset {}: '{}' cannot be called", opcode_offset_, name);
    const bool arity_ok = name == kRebuildTensorV2 ? (args.size() == 6 || args.size() == 7)
                                                   : args.size() == 4;
    if (!arity_ok)
      fail("pickle at offset {}: {} with {} arguments", opcode_offset_, name, args.size());
    const auto* storage = std::get_if<StorageRef>(&args[0]);
    if (!storage) fail("pickle at offset {}: {} without a storage", opcode_offset_, name);
    TensorRef tensor{*storage, integer(args[1], "storage offset"), integers(args[2], "tensor size"),
                     integers(args[3], "tensor stride")};
    if (tensor.size.size() != tensor.stride.size())
      fail("pickle at offset {}: tensor size {} and stride {} differ in rank", opcode_offset_,
           shape_string(tensor.size), shape_string(tensor.stride));
    return tensor;
  }

  std::span<const std::byte> data_;
  size_t pos_ = 0;
  size_t opcode_offset_ = 0;
  std::vector<Value> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Value> memo_;
  std::vector<Container> containers_;
};

}  // namespace

std::vector<std::pair<std::string, TensorRef>> read_state_dict(std::span<const std::byte> pickle) {
  return Unpickler(pickle).state_dict();
}

}  // namespace dj::torch_pickle
