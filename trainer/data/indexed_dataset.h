// Megatron / GPT-NeoX indexed datasets (".bin" tokens + ".idx" index, "MMIDIDX"), the format of
// Pythia's training data (docs/pythia.md, section 4): reading (memory-mapped, shards
// joined) and writing byte-compatible files.
#pragma once
#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace dj {

class IndexedDataset {
 public:
  // Opens PREFIX.idx and PREFIX.bin. Wrong magic, unsupported version or dtype, truncated or
  // mismatched files (pointers or sizes beyond the .bin) throw dj::Error naming the file.
  static IndexedDataset open(const std::string& prefix);
  // Several shards read as one dataset, in the order given (sequence and document indices are
  // offset accordingly); all shards must share one dtype.
  static IndexedDataset open_shards(const std::vector<std::string>& prefixes);
  ~IndexedDataset();
  IndexedDataset(IndexedDataset&&) noexcept;
  IndexedDataset& operator=(IndexedDataset&&) noexcept;

  int64_t sequences() const;
  int64_t sequence_length(int64_t i) const;
  // Tokens of sequence i (any stored integer dtype widened to int32).
  std::vector<int32_t> sequence(int64_t i) const;
  // `length` tokens starting `offset` tokens into sequence i.
  std::vector<int32_t> tokens(int64_t i, int64_t offset, int64_t length) const;
  const std::vector<int64_t>& document_index() const;  // doc_idx, shards joined
  int64_t total_tokens() const;

 private:
  struct Impl;
  explicit IndexedDataset(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Writes PREFIX.bin and PREFIX.idx (atomically) exactly as GPT-NeoX's MMapIndexedDatasetBuilder
// does for one document per sequence (doc_idx = [0, 1, ..., N]): u16 tokens (dtype code 8), as
// GPT-NeoX picks for vocabularies below 65500, or i32 (code 4) when `u16` is false.
class IndexedDatasetWriter {
 public:
  explicit IndexedDatasetWriter(std::string prefix, bool u16 = true);
  // One sequence, one document. A negative id, or one above 65535 with u16, throws dj::Error.
  void add_document(const std::vector<int32_t>& tokens);
  // Writes PREFIX.bin, then PREFIX.idx; the files appear only now (a reader never sees an index
  // without its data). A second call throws dj::Error, as does add_document after it.
  void finish();

 private:
  std::string prefix_;
  bool u16_;
  std::vector<int32_t> sizes_;
  std::vector<uint8_t> data_;
  bool finished_ = false;
};

// The tokens of every sequence of the shards, in order, concatenated (the documents joined: each
// already ends with its EOD). Throws dj::Error as IndexedDataset::open_shards does.
std::vector<int32_t> read_all_tokens(const std::vector<std::string>& prefixes);

}  // namespace dj
