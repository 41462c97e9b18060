#include <gtest/gtest.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "tests/unit/checkpoint_test_support.h"
#include "trainer/checkpoint/safetensors.h"

namespace dj {
namespace {

using test::fails_with;
using test::identical;
using test::read_bytes;
using test::TempDir;
using test::write_bytes;

constexpr DType kAllDTypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                                DType::I32, DType::I16, DType::I8,  DType::U64,  DType::U32,
                                DType::U16, DType::U8,  DType::BOOL};

// Distinct bytes in every position, so a misplaced or misordered byte shows up.
Tensor patterned(DType dtype, Shape shape, uint8_t seed) {
  Tensor tensor(dtype, std::move(shape));
  for (size_t i = 0; i < tensor.nbytes(); ++i)
    tensor.bytes()[i] =
        static_cast<std::byte>(dtype == DType::BOOL ? (i + seed) % 2 : i * 7 + seed);
  return tensor;
}

// A file of the given header text (length prefix added) followed by `data_bytes` zero bytes.
void write_raw(const std::filesystem::path& path, const std::string& header, size_t data_bytes) {
  const uint64_t length = header.size();
  std::string bytes(reinterpret_cast<const char*>(&length), 8);
  bytes += header;
  bytes.append(data_bytes, '\0');
  write_bytes(path, bytes);
}

TEST(Safetensors, RoundTripsEveryDTypeAndMetadata) {
  TempDir dir;
  TensorMap tensors;
  uint8_t seed = 1;
  for (DType dtype : kAllDTypes) {
    const std::string name(dtype_name(dtype));
    tensors.emplace("matrix." + name, patterned(dtype, {3, 5}, seed++));
    tensors.emplace("scalar." + name, patterned(dtype, {}, seed++));
    tensors.emplace("empty." + name, patterned(dtype, {0, 4}, seed++));
  }
  const std::map<std::string, std::string> metadata = {{"format", "pt"}, {"step", "143000"}};
  write_safetensors(dir / "all.safetensors", tensors, metadata);

  std::map<std::string, std::string> read_metadata;
  const TensorMap read = read_safetensors(dir / "all.safetensors", &read_metadata);
  EXPECT_TRUE(identical(read, tensors));
  EXPECT_EQ(read_metadata, metadata);
}

TEST(Safetensors, ReadsAFileWithoutTensorsOrMetadata) {
  TempDir dir;
  write_safetensors(dir / "empty.safetensors", {});
  std::map<std::string, std::string> metadata = {{"stale", "entry"}};
  EXPECT_TRUE(read_safetensors(dir / "empty.safetensors", &metadata).empty());
  EXPECT_TRUE(metadata.empty());
}

TEST(Safetensors, WriterIsDeterministicAlignedAndInNameOrder) {
  TempDir dir;
  TensorMap tensors;
  tensors.emplace("b", patterned(DType::F32, {3}, 1));
  tensors.emplace("a", patterned(DType::F16, {5}, 2));
  tensors.emplace("c", patterned(DType::U8, {1}, 3));
  write_safetensors(dir / "one.safetensors", tensors, {{"k", "v"}});
  write_safetensors(dir / "two.safetensors", tensors, {{"k", "v"}});
  const std::string bytes = read_bytes(dir / "one.safetensors");
  EXPECT_EQ(bytes, read_bytes(dir / "two.safetensors"));

  uint64_t header_length;
  std::memcpy(&header_length, bytes.data(), 8);
  EXPECT_EQ(header_length % 8, 0u);
  const std::string header = bytes.substr(8, header_length);
  // The reference layout: metadata first, tensors by name, fields in the reference order.
  EXPECT_EQ(header.substr(0, header.find_last_not_of(' ') + 1),
            R"({"__metadata__":{"k":"v"},)"
            R"("a":{"dtype":"F16","shape":[5],"data_offsets":[0,10]},)"
            R"("b":{"dtype":"F32","shape":[3],"data_offsets":[10,22]},)"
            R"("c":{"dtype":"U8","shape":[1],"data_offsets":[22,23]}})");
  EXPECT_EQ(bytes.size(), 8 + header_length + 23);
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + header_length, tensors.at("a").bytes(), 10), 0);
}

TEST(Safetensors, FailedWriteLeavesTheOldFileAndNoTemporary) {
  TempDir dir;
  const auto path = dir / "model.safetensors";
  write_safetensors(path, {{"a", patterned(DType::F32, {2}, 1)}});
  const std::string before = read_bytes(path);
  TensorMap bad;
  bad.emplace("a", Tensor());  // no storage
  EXPECT_TRUE(fails_with([&] { write_safetensors(path, bad); }, "tensor 'a' has no data"));
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir.path()),
                          std::filesystem::directory_iterator()),
            1);
}

TEST(Safetensors, RejectsTruncatedFiles) {
  TempDir dir;
  const auto good = dir / "good.safetensors";
  write_safetensors(good,
                    {{"a", patterned(DType::F32, {4, 4}, 1)}, {"b", patterned(DType::I8, {3}, 2)}});
  const std::string bytes = read_bytes(good);
  uint64_t header_length;
  std::memcpy(&header_length, bytes.data(), 8);
  const auto cut = dir / "cut.safetensors";
  const struct {
    size_t size;
    const char* error;
  } cases[] = {
      {0, "too short for the 8-byte header length"},
      {5, "too short for the 8-byte header length"},
      {8, "extends beyond the end of the file"},
      {8 + header_length / 2, "extends beyond the end of the file"},
      {8 + header_length, "extend beyond the data region"},
      {bytes.size() - 1,
       "tensor 'b': data_offsets [64, 67] extend beyond the data region of 66 bytes"},
  };
  for (const auto& c : cases) {
    write_bytes(cut, std::string_view(bytes).substr(0, c.size));
    EXPECT_TRUE(fails_with([&] { read_safetensors(cut); }, c.error)) << "cut at " << c.size;
    EXPECT_TRUE(fails_with([&] { read_safetensors(cut); }, cut.string() + ": "))
        << "cut at " << c.size;
  }
}

TEST(Safetensors, RejectsHugeOrOutOfFileHeaderLengths) {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  for (uint64_t length : {uint64_t{100'000'001}, ~uint64_t{0}}) {
    std::string bytes(reinterpret_cast<const char*>(&length), 8);
    bytes += "{}";
    write_bytes(path, bytes);
    EXPECT_TRUE(
        fails_with([&] { read_safetensors(path); }, "exceeds the limit of 100000000 bytes"));
  }
  const uint64_t length = 1000;
  write_bytes(path, std::string(reinterpret_cast<const char*>(&length), 8) + "{}      ");
  EXPECT_TRUE(fails_with([&] { read_safetensors(path); },
                         "header length 1000 extends beyond the end of the file (16 bytes"));
}

TEST(Safetensors, RejectsMalformedHeaders) {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  const auto expect_error = [&](const std::string& header, size_t data_bytes,
                                const std::string& error) {
    write_raw(path, header, data_bytes);
    EXPECT_TRUE(fails_with([&] { read_safetensors(path); }, error)) << header;
  };
  expect_error(R"({"a": {"dtype": "F32", "shape": [1], )", 4, "bad JSON header");
  expect_error("[1, 2]", 0, "expected a JSON object, got array");
  expect_error(R"({"a": 5})", 0, "tensor 'a': expected a JSON object");
  expect_error(R"({"a": {"dtype": "F32", "shape": [1]}})", 4,
               "tensor 'a': missing field 'data_offsets'");
  expect_error(R"({"a": {"dtype": "F8_E9", "shape": [1], "data_offsets": [0, 1]}})", 1,
               "tensor 'a': unknown dtype 'F8_E9'");
  expect_error(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0,
               "tensor 'a': shape must hold non-negative integers, got -1");
  expect_error(R"({"a": {"dtype": "F32", "shape": [1.5], "data_offsets": [0, 0]}})", 0,
               "shape must hold non-negative integers");
  expect_error(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4]}})", 4,
               "data_offsets must be [begin, end]");
  expect_error(R"({"a": {"dtype": "F32", "shape": [0], "data_offsets": [4, 0]}})", 4,
               "data_offsets [4, 0] end before they begin");
  expect_error(
      R"({"gpt_neox.embed_in.weight": {"dtype": "F32", "shape": [10, 10], "data_offsets": [0, 100]}})",
      100,
      "tensor 'gpt_neox.embed_in.weight': data_offsets [0, 100] hold 100 bytes but shape "
      "[10, 10] of F32 needs 400");
  expect_error(
      R"({"a": {"dtype": "I64", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]}})", 8,
      "needs more than 2^64");
  expect_error(R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
                   "a": {"dtype": "U8", "shape": [1], "data_offsets": [1, 2]}})",
               2, "duplicate tensor name 'a'");
  expect_error(R"({"__metadata__": {"step": 3}})", 0,
               "__metadata__ value for 'step' must be a string");
  expect_error(R"({"__metadata__": [1]})", 0, "__metadata__ must be an object of strings");
}

TEST(Safetensors, RejectsDataRegionsThatDoNotTile) {
  TempDir dir;
  const auto path = dir / "bad.safetensors";
  const auto expect_error = [&](const std::string& header, size_t data_bytes,
                                const std::string& error) {
    write_raw(path, header, data_bytes);
    EXPECT_TRUE(fails_with([&] { read_safetensors(path); }, error)) << header;
  };
  expect_error(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                   "b": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]}})",
               6, "bytes [2, 4) of the data region belong to no tensor (a hole before tensor 'b')");
  expect_error(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [2, 4]}})", 4,
               "bytes [0, 2) of the data region belong to no tensor");
  expect_error(R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}})", 5,
               "bytes [2, 5) of the data region belong to no tensor (after the last tensor)");
  expect_error(R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                   "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}})",
               6, "tensor 'b' (data_offsets [2, 6]) overlaps tensor 'a' (data_offsets [0, 4])");
  // Two empty tensors at the boundary between two others are neither holes nor overlaps.
  write_raw(path, R"({"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
                      "e": {"dtype": "F32", "shape": [0, 3], "data_offsets": [2, 2]},
                      "f": {"dtype": "I64", "shape": [0], "data_offsets": [2, 2]},
                      "b": {"dtype": "U8", "shape": [1], "data_offsets": [2, 3]}})",
            3);
  EXPECT_EQ(read_safetensors(path).size(), 4u);
}

TEST(Safetensors, ErrorsNameTheFile) {
  TempDir dir;
  EXPECT_TRUE(fails_with([&] { read_safetensors(dir / "absent.safetensors"); },
                         (dir / "absent.safetensors").string() + ": cannot read"));
}

}  // namespace
}  // namespace dj
