// The GPT-NeoX tokenizer (docs/pythia.md, section 5), read from a Hugging Face
// tokenizer.json: NFC normalisation (utf8proc), added tokens matched first, the GPT-2 byte-level
// pre-tokenizer regex (PCRE2), byte-to-unicode mapping and BPE merges; decode reverses it.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace dj {

class Tokenizer {
 public:
  // Throws dj::Error naming the file for a missing or malformed tokenizer.json, or one whose
  // model, normalizer or pre-tokenizer this implementation does not reproduce exactly.
  static Tokenizer from_file(const std::filesystem::path& tokenizer_json);
  ~Tokenizer();
  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;

  // Exactly what Hugging Face `tokenizers` returns for encode(text).ids (no BOS/EOS added).
  // Invalid UTF-8 input throws dj::Error.
  std::vector<int32_t> encode(std::string_view text) const;
  // Exactly what `tokenizers` returns for decode(ids, skip_special_tokens=False).
  std::string decode(const std::vector<int32_t>& ids) const;

  int32_t vocab_size() const;  // model vocabulary plus added tokens (50277 for GPT-NeoX)
  std::optional<int32_t> token_to_id(std::string_view token) const;
  int32_t end_of_document() const;  // the id of <|endoftext|> (0)

 private:
  struct Impl;
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dj
