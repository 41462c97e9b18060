// Megatron / GPT-NeoX indexed datasets: the goldens of tests/fixtures/make_indexed_fixtures.py
// (GPT-NeoX's writer logic) read token-exact, the writer reproduces them byte for byte, and every
// kind of damaged file fails with a dj::Error naming it.
#include "trainer/data/indexed_dataset.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tests/unit/checkpoint_test_support.h"
#include "tests/unit/fixture_paths.h"

namespace dj {
namespace {

using test::fails_with;
using test::read_bytes;
using test::TempDir;
using test::write_bytes;
using Documents = std::vector<std::vector<int32_t>>;

std::string golden(const std::string& name) { return test::fixture("indexed/" + name).string(); }

Documents expected(const std::string& name) {
  std::ifstream in(golden("expected.json"));
  return nlohmann::json::parse(in).at(name).get<Documents>();
}

std::vector<int64_t> iota_index(int64_t n) {
  std::vector<int64_t> index;
  for (int64_t j = 0; j <= n; ++j) index.push_back(j);
  return index;
}

void expect_documents(const IndexedDataset& dataset, const Documents& docs) {
  ASSERT_EQ(dataset.sequences(), static_cast<int64_t>(docs.size()));
  int64_t total = 0;
  for (size_t i = 0; i < docs.size(); ++i) {
    EXPECT_EQ(dataset.sequence_length(static_cast<int64_t>(i)), static_cast<int64_t>(docs[i].size()));
    EXPECT_EQ(dataset.sequence(static_cast<int64_t>(i)), docs[i]) << "sequence " << i;
    total += static_cast<int64_t>(docs[i].size());
  }
  EXPECT_EQ(dataset.total_tokens(), total);
}

TEST(IndexedDataset, ReadsGoldenU16TokenExact) {
  const IndexedDataset dataset = IndexedDataset::open(golden("docs"));
  const Documents docs = expected("docs");
  expect_documents(dataset, docs);
  EXPECT_EQ(dataset.document_index(), iota_index(20));
  for (const auto& doc : docs) EXPECT_EQ(doc.back(), 0) << "every document ends with EOD";
}

TEST(IndexedDataset, ReadsGoldenI32TokenExact) {
  const IndexedDataset dataset = IndexedDataset::open(golden("docs_i32"));
  expect_documents(dataset, expected("docs_i32"));
  EXPECT_EQ(dataset.document_index(), iota_index(20));
}

TEST(IndexedDataset, TokensSliceASequence) {
  const IndexedDataset dataset = IndexedDataset::open(golden("docs"));
  const std::vector<int32_t> whole = expected("docs")[2];
  EXPECT_EQ(dataset.tokens(2, 3, 4), std::vector<int32_t>(whole.begin() + 3, whole.begin() + 7));
  EXPECT_TRUE(dataset.tokens(2, static_cast<int64_t>(whole.size()), 0).empty());
  EXPECT_TRUE(fails_with([&] { dataset.tokens(2, 3, static_cast<int64_t>(whole.size())); }, "out of range"));
  EXPECT_TRUE(fails_with([&] { dataset.sequence(20); }, "sequence 20 is out of range"));
  EXPECT_TRUE(fails_with([&] { dataset.sequence(-1); }, "out of range"));
}

TEST(IndexedDataset, JoinsShardsInOrder) {
  const IndexedDataset dataset = IndexedDataset::open_shards({golden("docs"), golden("shard2")});
  Documents docs = expected("docs");
  const Documents second = expected("shard2");
  docs.insert(docs.end(), second.begin(), second.end());
  expect_documents(dataset, docs);
  EXPECT_EQ(dataset.document_index(), iota_index(23));

  std::vector<int32_t> stream;
  for (const auto& doc : docs) stream.insert(stream.end(), doc.begin(), doc.end());
  EXPECT_EQ(read_all_tokens({golden("docs"), golden("shard2")}), stream);
  EXPECT_TRUE(fails_with([] { IndexedDataset::open_shards({}); }, "no indexed dataset given"));
  EXPECT_TRUE(fails_with([] { IndexedDataset::open_shards({golden("docs"), golden("docs_i32")}); },
                         "docs_i32.idx: dtype code 4 differs from code 8"));
}

TEST(IndexedDataset, WriterIsByteIdenticalToGptNeox) {
  const TempDir dir;
  for (const auto& [name, u16] : {std::pair<std::string, bool>{"docs", true}, {"docs_i32", false}}) {
    const std::string prefix = (dir / name).string();
    IndexedDatasetWriter writer(prefix, u16);
    for (const auto& doc : expected(name)) writer.add_document(doc);
    EXPECT_FALSE(std::filesystem::exists(prefix + ".bin")) << "files appear only at finish";
    writer.finish();
    EXPECT_EQ(read_bytes(prefix + ".bin"), read_bytes(golden(name + ".bin"))) << name;
    EXPECT_EQ(read_bytes(prefix + ".idx"), read_bytes(golden(name + ".idx"))) << name;
    EXPECT_TRUE(fails_with([&] { writer.finish(); }, "finish called twice"));
    EXPECT_TRUE(fails_with([&] { writer.add_document({1}); }, "add_document after finish"));
  }
}

TEST(IndexedDataset, WriterRejectsIdsOutsideItsDtype) {
  const TempDir dir;
  IndexedDatasetWriter u16((dir / "u16").string());
  EXPECT_TRUE(fails_with([&] { u16.add_document({1, 70000}); }, "token id 70000 does not fit the dataset's u16"));
  IndexedDatasetWriter i32((dir / "i32").string(), false);
  EXPECT_TRUE(fails_with([&] { i32.add_document({-1}); }, "token id -1 does not fit"));
  i32.add_document({70000});
  i32.add_document({});  // an empty sequence is representable, as in GPT-NeoX
  i32.finish();
  const IndexedDataset dataset = IndexedDataset::open((dir / "i32").string());
  EXPECT_EQ(dataset.sequence(0), std::vector<int32_t>{70000});
  EXPECT_TRUE(dataset.sequence(1).empty());
}

// A copy of the golden u16 dataset in a scratch directory, with `damage` applied to its bytes.
class DamagedDataset {
 public:
  std::string prefix() const { return (dir_ / "d").string(); }
  std::string idx() const { return prefix() + ".idx"; }
  std::string bin() const { return prefix() + ".bin"; }
  void write(const std::string& idx_bytes, const std::string& bin_bytes) const {
    write_bytes(idx(), idx_bytes);
    write_bytes(bin(), bin_bytes);
  }

 private:
  TempDir dir_;
};

template <typename T>
void poke(std::string& bytes, size_t at, T value) {
  std::memcpy(bytes.data() + at, &value, sizeof value);
}

TEST(IndexedDataset, RejectsDamagedFilesNamingThem) {
  const std::string idx = read_bytes(golden("docs.idx")), bin = read_bytes(golden("docs.bin"));
  constexpr size_t kHeader = 34, kN = 20;
  const size_t pointers = kHeader + 4 * kN, doc_idx = pointers + 8 * kN;
  const DamagedDataset d;
  const auto expect_error = [&](const std::string& idx_bytes, const std::string& bin_bytes, const std::string& file,
                                const std::string& message) {
    d.write(idx_bytes, bin_bytes);
    EXPECT_TRUE(fails_with([&] { IndexedDataset::open(d.prefix()); }, file + ": " + message));
  };

  std::string bytes = idx;
  bytes[0] = 'X';
  expect_error(bytes, bin, d.idx(), "not a Megatron indexed dataset index (wrong magic)");
  expect_error(idx.substr(0, idx.size() - 1), bin, d.idx(), "its 441 bytes do not match its header");
  expect_error(idx + "x", bin, d.idx(), "its 443 bytes do not match its header (20 sequences, 21 doc_idx");
  expect_error(idx.substr(0, 20), bin, d.idx(), "truncated index (20 bytes");
  expect_error(idx, bin.substr(0, bin.size() - 2), d.bin(), "sequence 19");
  bytes = idx;
  poke<int64_t>(bytes, pointers + 8 * (kN - 1), static_cast<int64_t>(bin.size()));
  expect_error(bytes, bin, d.bin(), "sequence 19 (12 tokens at byte 638, from " + d.idx() + ") lies beyond the end");
  bytes = idx;
  poke<int64_t>(bytes, pointers, -2);
  expect_error(bytes, bin, d.bin(), "sequence 0");
  bytes = idx;
  poke<int32_t>(bytes, kHeader, -1);
  expect_error(bytes, bin, d.idx(), "sequence 0 has negative size -1");
  bytes = idx;
  bytes[17] = 6;
  expect_error(bytes, bin, d.idx(), "dtype code 6 is a float type");
  bytes[17] = 9;
  expect_error(bytes, bin, d.idx(), "unknown dtype code 9");
  bytes = idx;
  poke<uint64_t>(bytes, 9, 2);
  expect_error(bytes, bin, d.idx(), "unsupported index version 2");
  bytes = idx;
  poke<uint64_t>(bytes, 18, uint64_t{1} << 62);  // a sequence count whose arrays would overflow
  expect_error(bytes, bin, d.idx(), "its 442 bytes do not match its header (4611686018427387904 sequences");
  bytes = idx;
  poke<int64_t>(bytes, doc_idx + 8 * kN, kN - 1);
  expect_error(bytes, bin, d.idx(), "doc_idx does not rise monotonically from 0");
  bytes = idx;
  poke<int64_t>(bytes, doc_idx + 8 * 3, 7);
  expect_error(bytes, bin, d.idx(), "doc_idx does not rise monotonically");

  std::filesystem::remove(d.bin());
  EXPECT_TRUE(fails_with([&] { IndexedDataset::open(d.prefix()); }, "cannot open " + d.bin()));
  EXPECT_TRUE(fails_with([] { IndexedDataset::open("/nonexistent/x"); }, "cannot open /nonexistent/x.idx"));
}

}  // namespace
}  // namespace dj
