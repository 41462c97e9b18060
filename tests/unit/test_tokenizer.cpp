// The GPT-NeoX tokenizer against goldens recorded from Hugging Face `tokenizers`
// (tests/fixtures/make_tokenizer_fixtures.py) and the checked outputs of docs/pythia.md, section 5.
#include <gtest/gtest.h>
#include <utf8proc.h>

#include <chrono>
#include <ctime>
#include <cstdlib>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>

#include "fixture_paths.h"
#include "kernels/core/error.h"
#include "trainer/data/npy.h"
#include "trainer/data/tokenizer.h"

namespace dj {
namespace {

const Tokenizer& neox() {
  static const Tokenizer tokenizer = Tokenizer::from_file(test::source_dir() / "data" / "tokenizer" / "tokenizer.json");
  return tokenizer;
}

std::vector<nlohmann::json> goldens() {
  std::ifstream in(test::fixture("tokenizer/goldens.jsonl"));
  std::vector<nlohmann::json> cases;
  for (std::string line; std::getline(in, line);) cases.push_back(nlohmann::json::parse(line));
  return cases;
}

std::string nfc(const std::string& s) {
  utf8proc_uint8_t* out = nullptr;  // utf8proc_map with a length, since some goldens hold U+0000
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
  if (n < 0) return "";
  std::string result(reinterpret_cast<const char*>(out), static_cast<size_t>(n));
  std::free(out);
  return result;
}

std::filesystem::path write_temp(const std::string& name, const std::string& content) {
  const auto path = std::filesystem::temp_directory_path() / ("dijiang_tokenizer_" + name);
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

TEST(Tokenizer, CheckedOutputsOfTheReference) {
  EXPECT_EQ(neox().encode("Hello, I am"), (std::vector<int32_t>{12092, 13, 309, 717}));
  EXPECT_EQ(neox().encode("a  b"), (std::vector<int32_t>{66, 50276, 67}));
  EXPECT_EQ(neox().encode("foo <|endoftext|> bar"), (std::vector<int32_t>{12110, 209, 0, 2534}));
  EXPECT_EQ(neox().encode("e\u0301"), (std::vector<int32_t>{860}));
  EXPECT_EQ(neox().vocab_size(), 50277);
  EXPECT_EQ(neox().end_of_document(), 0);
  EXPECT_EQ(neox().token_to_id("<|padding|>"), 1);
  EXPECT_EQ(neox().token_to_id("Hello"), 12092);
  EXPECT_EQ(neox().token_to_id("no such token"), std::nullopt);
}

TEST(Tokenizer, MatchesEveryGolden) {
  const std::vector<nlohmann::json> cases = goldens();
  ASSERT_GE(cases.size(), 1000u);
  int encoded = 0;
  for (const nlohmann::json& c : cases) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    if (c.contains("text")) {
      const auto text = c.at("text").get<std::string>();
      EXPECT_EQ(neox().encode(text), ids) << "encoding " << c.at("text").dump();
      ++encoded;
    }
    EXPECT_EQ(neox().decode(ids), c.at("decoded").get<std::string>()) << "decoding " << c.at("ids").dump();
  }
  EXPECT_GE(encoded, 1000);
}

TEST(Tokenizer, DecodeOfEncodeIsTheNfcText) {
  for (const nlohmann::json& c : goldens()) {
    if (!c.contains("text")) continue;
    const auto text = c.at("text").get<std::string>();
    EXPECT_EQ(neox().decode(neox().encode(text)), nfc(text)) << c.at("text").dump();
  }
}

TEST(Tokenizer, RejectsInvalidUtf8AndNegativeIds) {
  EXPECT_THROW(neox().encode("a\xC3"), Error);
  EXPECT_THROW(neox().encode("\xED\xA0\x80"), Error);  // a surrogate
  EXPECT_THROW(neox().decode({-1}), Error);
}

TEST(Tokenizer, EncodesAMegabyteOfEnglishQuickly) {
  std::string text;
  const std::string paragraph =
      "The Pythia suite was trained on the Pile, a large dataset of diverse English text. Each model "
      "saw the same data in the same order, which makes it possible to study how behaviour develops "
      "during training. It's 2023, and we're releasing 154 checkpoints for every model size!\n\n";
  for (int i = 0; text.size() < (1 << 20); ++i) text += std::to_string(i) + ". " + paragraph;
  const Tokenizer& tokenizer = neox();  // loaded outside the timed region
  // The bound is on this process's CPU time (encoding runs on one thread), which other work on a
  // loaded machine does not stretch as it stretches the wall clock; the wall clock is reported.
  const auto start = std::chrono::steady_clock::now();
  const std::clock_t cpu_start = std::clock();
  const std::vector<int32_t> ids = tokenizer.encode(text);
  const double cpu_seconds = static_cast<double>(std::clock() - cpu_start) / CLOCKS_PER_SEC;
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("encoded %zu bytes into %zu tokens in %.3f s of CPU time, %.3f s of wall time (%.0f tokens/s)\n",
              text.size(), ids.size(), cpu_seconds, seconds, static_cast<double>(ids.size()) / cpu_seconds);
  EXPECT_EQ(neox().decode(ids), text);
  EXPECT_LT(cpu_seconds, 5.0);  // generous: about 0.05 s in a release build, more in a debug one
}

TEST(Tokenizer, BadFilesAreErrors) {
  EXPECT_THROW(Tokenizer::from_file("/nonexistent/tokenizer.json"), Error);
  EXPECT_THROW(Tokenizer::from_file(write_temp("bad.json", "{\"model\": ")), Error);
  EXPECT_THROW(Tokenizer::from_file(write_temp("array.json", "[1, 2]")), Error);
  const std::string wordpiece =
      R"({"normalizer": null, "pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"},
          "model": {"type": "WordPiece", "vocab": {"a": 0}}})";
  try {
    Tokenizer::from_file(write_temp("wordpiece.json", wordpiece));
    FAIL() << "a WordPiece model was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("WordPiece"), std::string::npos) << e.what();
  }
  const std::string no_bytes =
      R"({"pre_tokenizer": {"type": "ByteLevel"}, "decoder": {"type": "ByteLevel"},
          "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  EXPECT_THROW(Tokenizer::from_file(write_temp("nobytes.json", no_bytes)), Error);
}

TEST(TokenizerNpy, WritesNarrowOrWideIdsThatReadBack) {
  const auto dir = std::filesystem::temp_directory_path();
  const std::vector<int32_t> narrow = {0, 1, 50276, 65535}, wide = {0, 65536, 1 << 30};
  write_npy_tokens(dir / "dijiang_tokens_u2.npy", narrow);
  write_npy_tokens(dir / "dijiang_tokens_i4.npy", wide);
  EXPECT_EQ(read_npy_tokens(dir / "dijiang_tokens_u2.npy"), narrow);
  EXPECT_EQ(read_npy_tokens(dir / "dijiang_tokens_i4.npy"), wide);
  // A 128-byte header (preamble + dict padded to a multiple of 64), then 2 or 4 bytes per id.
  EXPECT_EQ(std::filesystem::file_size(dir / "dijiang_tokens_u2.npy"), 128u + 4 * 2);
  EXPECT_EQ(std::filesystem::file_size(dir / "dijiang_tokens_i4.npy"), 128u + 3 * 4);
  EXPECT_THROW(write_npy_tokens(dir / "dijiang_tokens_bad.npy", {3, -1}), Error);
  // A dtype size too large for an int is refused like any other non-integer dtype (found by
  // fuzzing: std::stoi threw std::out_of_range).
  const std::string header = "{'descr': '<u99999999999', 'fortran_order': False, 'shape': (2,), }      \n";
  std::ofstream(dir / "dijiang_tokens_size.npy", std::ios::binary)
      << std::string("\x93NUMPY\x01\x00", 8) << static_cast<char>(header.size()) << '\0' << header;
  try {
    read_npy_tokens(dir / "dijiang_tokens_size.npy");
    FAIL() << "an oversized dtype was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not an integer type"), std::string::npos) << e.what();
  }
  // A length the file cannot hold is refused before anything is allocated (found by fuzzing: the
  // reader allocated what the header promised).
  const std::string huge = "{'descr': '<u8', 'fortran_order': False, 'shape': (300000000000,), }    \n";
  std::ofstream(dir / "dijiang_tokens_huge.npy", std::ios::binary)
      << std::string("\x93NUMPY\x01\x00", 8) << static_cast<char>(huge.size()) << '\0' << huge << "12345678";
  try {
    read_npy_tokens(dir / "dijiang_tokens_huge.npy");
    FAIL() << "a length beyond the file was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("truncated: the header promises 300000000000 elements"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace dj
