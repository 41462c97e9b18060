#include "trainer/data/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <utf8proc.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <queue>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"

// Each step mirrors the Hugging Face `tokenizers` code path (version 0.23) that
// tests/fixtures/tokenizer/goldens.jsonl was recorded from:
//   AddedVocabulary::extract_and_normalize → NFC → ByteLevel pre-tokenizer → BPE::tokenize,
//   and Tokenizer::decode → ByteLevel decoder (String::from_utf8_lossy).

namespace dj {

namespace {

// ---------------------------------------------------------------------------------------------
// UTF-8

// Length of the well-formed UTF-8 sequence starting at s[i] (Unicode Table 3-7), or, negated, the
// length of its maximal ill-formed subpart: the bytes Rust's from_utf8_lossy replaces by one U+FFFD.
int utf8_sequence(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char lead = byte(i);
  if (lead < 0x80) return 1;
  int length = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // the allowed range of the second byte
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    if (lead == 0xE0) lo = 0xA0;  // no overlong forms
    if (lead == 0xED) hi = 0x9F;  // no surrogates
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    if (lead == 0xF0) lo = 0x90;  // no overlong forms
    if (lead == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return -1;
  }
  for (int k = 1; k < length; ++k) {
    if (i + static_cast<size_t>(k) >= s.size()) return -k;
    const unsigned char c = byte(i + static_cast<size_t>(k));
    if (k == 1 ? (c < lo || c > hi) : (c < 0x80 || c > 0xBF)) return -k;
  }
  return length;
}

std::string utf8_encode(char32_t cp) {
  utf8proc_uint8_t buffer[4];
  const utf8proc_ssize_t n = utf8proc_encode_char(static_cast<utf8proc_int32_t>(cp), buffer);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(n));
}

// String::from_utf8_lossy: every maximal ill-formed subpart becomes one U+FFFD.
std::string utf8_lossy(std::string_view bytes) {
  static const std::string kReplacement = utf8_encode(0xFFFD);
  std::string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) {
    const int n = utf8_sequence(bytes, i);
    if (n > 0) {
      out.append(bytes.substr(i, static_cast<size_t>(n)));
      i += static_cast<size_t>(n);
    } else {
      out += kReplacement;
      i += static_cast<size_t>(-n);
    }
  }
  return out;
}

void check_utf8(std::string_view text) {
  for (size_t i = 0; i < text.size();) {
    const int n = utf8_sequence(text, i);
    if (n < 0) fail("tokenizer input is not valid UTF-8 (bad byte 0x{:02X} at offset {})",
                    static_cast<unsigned char>(text[i]), i);
    i += static_cast<size_t>(n);
  }
}

// The code points of a well-formed UTF-8 string.
std::vector<char32_t> code_points(std::string_view s) {
  std::vector<char32_t> out;
  for (size_t i = 0; i < s.size();) {
    utf8proc_int32_t cp = 0;
    const utf8proc_ssize_t n = utf8proc_iterate(reinterpret_cast<const utf8proc_uint8_t*>(s.data() + i),
                                                static_cast<utf8proc_ssize_t>(s.size() - i), &cp);
    if (n <= 0) fail("tokenizer.json holds a token that is not valid UTF-8");
    out.push_back(static_cast<char32_t>(cp));
    i += static_cast<size_t>(n);
  }
  return out;
}

std::string nfc(std::string_view text) {
  const bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; });
  if (ascii) return std::string(text);  // ASCII is its own NFC form; skips utf8proc's allocation
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                                          static_cast<utf8proc_ssize_t>(text.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) fail("NFC normalisation failed: {}", utf8proc_errmsg(n));
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 bytes-to-unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes are
// mapped in order to U+0100, U+0101, ... so that every byte is a visible character.
std::array<char32_t, 256> bytes_to_unicode() {
  std::array<char32_t, 256> table{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[static_cast<size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// ---------------------------------------------------------------------------------------------
// Added tokens: a byte trie matched leftmost-longest, like the aho-corasick automaton of
// AddedVocabulary (MatchKind::LeftmostLongest, non-overlapping).
class AddedTokenMatcher {
 public:
  void add(std::string_view content, int32_t id) {
    size_t node = 0;
    for (const char c : content) {
      const auto byte = static_cast<unsigned char>(c);
      if (nodes_[node].children[byte] < 0) {
        // Index, not reference: emplace_back may move the nodes.
        const auto added = static_cast<int32_t>(nodes_.size());
        nodes_.emplace_back();
        nodes_[node].children[byte] = added;
      }
      node = static_cast<size_t>(nodes_[node].children[byte]);
    }
    nodes_[node].id = id;
  }

  struct Piece {
    std::string_view text;
    int32_t id;  // the added token's id, or -1 for text between matches
  };

  // Splits `text` into added tokens and the (possibly empty, when nothing matched) text between.
  template <typename Emit>
  void split(std::string_view text, const Emit& emit) const {
    size_t start = 0;
    for (size_t i = 0; i < text.size();) {
      size_t node = 0, match_length = 0;
      int32_t match_id = -1;
      for (size_t k = i; k < text.size(); ++k) {
        const int32_t child = nodes_[node].children[static_cast<unsigned char>(text[k])];
        if (child < 0) break;
        node = static_cast<size_t>(child);
        if (nodes_[node].id >= 0) {
          match_length = k + 1 - i;
          match_id = nodes_[node].id;
        }
      }
      if (match_id < 0) {
        ++i;
        continue;
      }
      if (i > start) emit(Piece{text.substr(start, i - start), -1});
      emit(Piece{text.substr(i, match_length), match_id});
      i += match_length;
      start = i;
    }
    if (start < text.size() || text.empty()) emit(Piece{text.substr(start), -1});
  }

 private:
  struct Node {
    Node() { children.fill(-1); }
    std::array<int32_t, 256> children;
    int32_t id = -1;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
};

// ---------------------------------------------------------------------------------------------
// The ByteLevel pre-tokenizer regex. HF compiles \s with Oniguruma, where it is U+0009..U+000D,
// U+0085 and the Z categories (Unicode White_Space); PCRE2's \s with UCP also takes U+180E, so the
// class is spelled out.
constexpr char kSpaces[] = R"(\t\n\x{0B}\f\r\x{85}\p{Z})";
const std::string kPattern = std::string(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^)") + kSpaces +
                             R"(\p{L}\p{N}]+|[)" + kSpaces + "]+(?![^" + kSpaces + "])|[" + kSpaces + "]+";

struct CodeDeleter {
  void operator()(pcre2_code* code) const { pcre2_code_free(code); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* data) const { pcre2_match_data_free(data); }
};

struct Merge {
  int32_t rank;
  int32_t id;  // the merged token
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

const nlohmann::json& member(const nlohmann::json& j, const char* key) {
  static const nlohmann::json kNull;
  return j.is_object() && j.contains(key) ? j.at(key) : kNull;
}

// Lets the word cache be searched with a std::string_view.
struct WordHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Whether an optional string setting is absent, null or empty.
bool unset(const nlohmann::json& j) { return j.is_null() || (j.is_string() && j.get<std::string>().empty()); }

}  // namespace

struct Tokenizer::Impl {
  std::string file;
  std::unordered_map<std::string, int32_t> vocab;  // model tokens (byte-level strings)
  std::unordered_map<uint64_t, Merge> merges;      // (left id, right id) → merge
  std::array<int32_t, 256> byte_ids{};             // the single-byte token of each byte, -1 if none
  std::unordered_map<std::string, int32_t> added;  // added token content → id
  AddedTokenMatcher raw_added, normalized_added;   // matched before / after normalisation
  std::unordered_map<int32_t, std::string> id_bytes;  // what each id decodes to, before UTF-8 repair
  int32_t vocab_size = 0;
  int32_t end_of_document = -1;
  std::unique_ptr<pcre2_code, CodeDeleter> pattern;

  void load(const nlohmann::json& j);

  // BPE::merge_word: a heap of candidate pairs, lowest rank first and leftmost on ties; entries
  // whose pair no longer exists (a neighbour merged first) are skipped when popped.
  void bpe(std::string_view word, std::vector<int32_t>& out) const {
    struct Symbol {
      int32_t id, prev, next;
    };
    std::vector<Symbol> symbols(word.size());
    for (size_t i = 0; i < word.size(); ++i) {
      const int pos = static_cast<int>(i);
      symbols[i] = {byte_ids[static_cast<unsigned char>(word[i])], pos - 1,
                    i + 1 < word.size() ? pos + 1 : -1};
    }
    struct Candidate {
      int32_t rank, pos, id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
    const auto push = [&](int32_t pos) {
      const Symbol& s = symbols[static_cast<size_t>(pos)];
      if (s.next < 0) return;
      const auto it = merges.find(pair_key(s.id, symbols[static_cast<size_t>(s.next)].id));
      if (it != merges.end()) queue.push({it->second.rank, pos, it->second.id});
    };
    for (size_t i = 0; i + 1 < word.size(); ++i) push(static_cast<int32_t>(i));
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = symbols[static_cast<size_t>(top.pos)];
      if (left.id < 0 || left.next < 0) continue;
      const auto it = merges.find(pair_key(left.id, symbols[static_cast<size_t>(left.next)].id));
      if (it == merges.end() || it->second.id != top.id) continue;  // stale entry
      Symbol& right = symbols[static_cast<size_t>(left.next)];
      left.id = top.id;
      right.id = -1;  // absorbed
      left.next = right.next;
      if (left.next >= 0) symbols[static_cast<size_t>(left.next)].prev = top.pos;
      if (left.prev >= 0) push(left.prev);
      push(top.pos);
    }
    for (const Symbol& s : symbols)
      if (s.id >= 0) out.push_back(s.id);
  }
};

void Tokenizer::Impl::load(const nlohmann::json& j) {
  const nlohmann::json& model = member(j, "model");
  if (member(model, "type") != "BPE")
    fail("{}: model type {} is not supported (only BPE)", file, member(model, "type").dump());
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!unset(member(model, key))) fail("{}: BPE option '{}' is not supported", file, key);
  if (!member(model, "dropout").is_null() && member(model, "dropout") != 0.0)
    fail("{}: BPE dropout is not supported", file);
  if (member(model, "ignore_merges") == true) fail("{}: BPE ignore_merges is not supported", file);

  const nlohmann::json& normalizer = member(j, "normalizer");
  if (!normalizer.is_null() && member(normalizer, "type") != "NFC")
    fail("{}: normalizer {} is not supported (only NFC)", file, member(normalizer, "type").dump());
  const bool normalize = !normalizer.is_null();
  const nlohmann::json& pre = member(j, "pre_tokenizer");
  if (member(pre, "type") != "ByteLevel" || member(pre, "add_prefix_space") == true ||
      member(pre, "use_regex") == false)
    fail("{}: pre-tokenizer {} is not supported (only ByteLevel, add_prefix_space false, use_regex true)",
         file, pre.dump());
  const nlohmann::json& decoder = member(j, "decoder");
  if (member(decoder, "type") != "ByteLevel")
    fail("{}: decoder {} is not supported (only ByteLevel)", file, member(decoder, "type").dump());
  const nlohmann::json& post = member(j, "post_processor");
  if (!post.is_null() && member(post, "type") != "ByteLevel")
    fail("{}: post-processor {} is not supported (only ByteLevel, which adds no tokens)", file,
         member(post, "type").dump());

  const nlohmann::json& vocab_json = member(model, "vocab");
  if (!vocab_json.is_object()) fail("{}: model.vocab is not an object", file);
  std::unordered_set<std::string> all_tokens;
  for (const auto& [token, id] : vocab_json.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      fail("{}: vocabulary id of {} is not a non-negative integer", file, nlohmann::json(token).dump());
    vocab.emplace(token, id.get<int32_t>());
    all_tokens.insert(token);
  }

  const std::array<char32_t, 256> byte_chars = bytes_to_unicode();
  std::unordered_map<char32_t, char> char_bytes;
  for (int b = 0; b < 256; ++b) {
    char_bytes.emplace(byte_chars[static_cast<size_t>(b)], static_cast<char>(b));
    const auto it = vocab.find(utf8_encode(byte_chars[static_cast<size_t>(b)]));
    byte_ids[static_cast<size_t>(b)] = it == vocab.end() ? -1 : it->second;
    // Bytes C0, C1 and F5..FF never occur in UTF-8; every other byte must have a token, since BPE
    // starts from single bytes and this model has no unknown token.
    const bool in_utf8 = b < 0xC0 || (b >= 0xC2 && b <= 0xF4);
    if (in_utf8 && it == vocab.end()) fail("{}: the vocabulary has no token for byte 0x{:02X}", file, b);
  }

  const nlohmann::json& merges_json = member(model, "merges");
  if (!merges_json.is_array()) fail("{}: model.merges is not an array", file);
  const auto id_of = [&](const std::string& token) {
    const auto it = vocab.find(token);
    if (it == vocab.end()) fail("{}: merge token {} is not in the vocabulary", file, nlohmann::json(token).dump());
    return it->second;
  };
  for (size_t rank = 0; rank < merges_json.size(); ++rank) {
    const nlohmann::json& m = merges_json[rank];
    std::string left, right;
    if (m.is_string()) {  // "left right"
      const std::string s = m.get<std::string>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos)
        fail("{}: merge {} is not two tokens", file, m.dump());
      left = s.substr(0, space);
      right = s.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {  // ["left", "right"]
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      fail("{}: merge {} is not two tokens", file, m.dump());
    }
    // Later duplicates replace earlier ones, as when `tokenizers` collects the merges into a map.
    merges[pair_key(id_of(left), id_of(right))] = Merge{static_cast<int32_t>(rank), id_of(left + right)};
  }

  const nlohmann::json& added_json = member(j, "added_tokens");
  if (!added_json.is_null() && !added_json.is_array()) fail("{}: added_tokens is not an array", file);
  for (const nlohmann::json& a : added_json.is_array() ? added_json : nlohmann::json::array()) {
    if (!member(a, "content").is_string() || !member(a, "id").is_number_integer())
      fail("{}: added token {} lacks a content or id", file, a.dump());
    for (const char* flag : {"lstrip", "rstrip", "single_word"})
      if (member(a, flag) == true) fail("{}: added token {} sets '{}', which is not supported", file, a.dump(), flag);
    const std::string content = member(a, "content").get<std::string>();
    const int32_t id = member(a, "id").get<int32_t>();
    if (content.empty() || id < 0) fail("{}: added token {} is empty or has a negative id", file, a.dump());
    added[content] = id;
    all_tokens.insert(content);
    // A normalized added token is matched in the normalized text, so by its normalized form.
    const bool normalized = member(a, "normalized") != false;
    if (normalized) normalized_added.add(normalize ? nfc(content) : content, id);
    else raw_added.add(content, id);
  }
  vocab_size = static_cast<int32_t>(all_tokens.size());
  const auto eod = added.find("<|endoftext|>");
  if (eod == added.end()) fail("{}: there is no <|endoftext|> token", file);
  end_of_document = eod->second;

  // The ByteLevel decoder turns each token's characters back into bytes; a token holding a
  // character outside the byte map (such as an added token of plain spaces) stays as its UTF-8.
  const auto token_bytes = [&](const std::string& token) {
    std::string bytes;
    for (const char32_t c : code_points(token)) {
      const auto it = char_bytes.find(c);
      if (it == char_bytes.end()) return token;
      bytes += it->second;
    }
    return bytes;
  };
  for (const auto& [token, id] : vocab) id_bytes.emplace(id, token_bytes(token));
  for (const auto& [token, id] : added) id_bytes[id] = token_bytes(token);  // added tokens win

  int error = 0;
  PCRE2_SIZE error_offset = 0;
  pattern.reset(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kPattern.c_str()), kPattern.size(),
                                PCRE2_UTF | PCRE2_UCP, &error, &error_offset, nullptr));
  if (!pattern) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail("pre-tokenizer regex does not compile at offset {}: {}", error_offset, reinterpret_cast<const char*>(message));
  }
  // JIT is only an accelerator: where it is unavailable pcre2_match interprets the same pattern.
  pcre2_jit_compile(pattern.get(), PCRE2_JIT_COMPLETE);
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::~Tokenizer() = default;
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;

Tokenizer Tokenizer::from_file(const std::filesystem::path& tokenizer_json) {
  auto impl = std::make_unique<Impl>();
  impl->file = tokenizer_json.string();
  std::ifstream in(tokenizer_json, std::ios::binary);
  if (!in) fail("{}: cannot open tokenizer", impl->file);
  const nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded()) fail("{}: not valid JSON", impl->file);
  if (!j.is_object()) fail("{}: not a tokenizer.json object", impl->file);
  try {
    impl->load(j);
  } catch (const nlohmann::json::exception& e) {  // a member of an unexpected JSON type
    fail("{}: malformed tokenizer.json: {}", impl->file, e.what());
  }
  return Tokenizer(std::move(impl));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text) const {
  check_utf8(text);
  const Impl& t = *impl_;
  std::vector<int32_t> ids;
  std::unique_ptr<pcre2_match_data, MatchDataDeleter> match(pcre2_match_data_create_from_pattern(t.pattern.get(), nullptr));
  if (!match) fail("out of memory for the pre-tokenizer");
  // Words repeat a lot in natural text; the cache is bounded so huge inputs stay in memory.
  constexpr size_t kCacheLimit = size_t{1} << 16;
  std::unordered_map<std::string, std::vector<int32_t>, WordHash, std::equal_to<>> cache;

  const auto encode_word = [&](std::string_view word) {
    if (const auto it = cache.find(word); it != cache.end()) {
      ids.insert(ids.end(), it->second.begin(), it->second.end());
      return;
    }
    const size_t first = ids.size();
    t.bpe(word, ids);
    if (cache.size() >= kCacheLimit) cache.clear();
    cache.emplace(std::string(word), std::vector<int32_t>(ids.begin() + static_cast<std::ptrdiff_t>(first), ids.end()));
  };
  // The pre-tokenizer keeps both the regex matches and any text between them as words.
  const auto pre_tokenize = [&](std::string_view piece) {
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
    size_t offset = 0;
    while (offset < piece.size()) {
      const int rc = pcre2_match(t.pattern.get(), subject, piece.size(), offset, PCRE2_NO_UTF_CHECK, match.get(), nullptr);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) fail("pre-tokenizer regex failed with PCRE2 error {}", rc);
      const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match.get());
      if (range[0] > offset) encode_word(piece.substr(offset, range[0] - offset));
      encode_word(piece.substr(range[0], range[1] - range[0]));
      offset = range[1];
    }
    if (offset < piece.size()) encode_word(piece.substr(offset));
  };

  t.raw_added.split(text, [&](const AddedTokenMatcher::Piece& raw) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      return;
    }
    const std::string normalized = nfc(raw.text);
    t.normalized_added.split(normalized, [&](const AddedTokenMatcher::Piece& piece) {
      if (piece.id >= 0) ids.push_back(piece.id);
      else pre_tokenize(piece.text);
    });
  });
  return ids;
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string bytes;
  for (const int32_t id : ids) {
    if (id < 0) fail("cannot decode negative token id {}", id);
    // `tokenizers` silently drops ids it has no token for.
    if (const auto it = impl_->id_bytes.find(id); it != impl_->id_bytes.end()) bytes += it->second;
  }
  return utf8_lossy(bytes);
}

int32_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  const std::string key(token);
  if (const auto it = impl_->added.find(key); it != impl_->added.end()) return it->second;
  if (const auto it = impl_->vocab.find(key); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

int32_t Tokenizer::end_of_document() const { return impl_->end_of_document; }

}  // namespace dj
