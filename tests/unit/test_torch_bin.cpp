#include <gtest/gtest.h>
#include <zip.h>

#include <map>
#include <random>
#include <vector>

#include "kernels/core/dtype.h"
#include "tests/unit/checkpoint_test_support.h"
#include "trainer/checkpoint/torch_bin.h"

namespace dj {
namespace {

using test::fails_with;
using test::read_bytes;
using test::TempDir;
using test::write_bytes;
using namespace std::string_literals;  // pickles contain NUL bytes

// Writes a zip archive holding `records` (name -> bytes), stored uncompressed as torch.save does.
void write_zip(const std::filesystem::path& path,
               const std::map<std::string, std::string>& records) {
  int code = 0;
  zip_t* archive = zip_open(path.c_str(), ZIP_CREATE | ZIP_TRUNCATE, &code);
  ASSERT_NE(archive, nullptr) << "zip_open failed with code " << code;
  for (const auto& [name, bytes] : records) {
    zip_source_t* source = zip_source_buffer(archive, bytes.data(), bytes.size(), 0);
    ASSERT_NE(source, nullptr);
    const zip_int64_t index = zip_file_add(archive, name.c_str(), source, 0);
    ASSERT_GE(index, 0) << zip_strerror(archive);
    zip_set_file_compression(archive, static_cast<zip_uint64_t>(index), ZIP_CM_STORE, 0);
  }
  ASSERT_EQ(zip_close(archive), 0) << zip_strerror(archive);  // writes while the buffers live
}

template <typename T>
std::string raw_bytes(const std::vector<T>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(T));
}

// Emits pickle opcodes by hand: the same byte sequences torch.save produces.
class Pickle {
 public:
  Pickle& op(uint8_t code) { return raw(std::string(1, static_cast<char>(code))); }
  Pickle& raw(std::string_view bytes) {
    bytes_ += bytes;
    return *this;
  }
  Pickle& proto(uint8_t version) { return op(0x80).op(version); }
  Pickle& global(const std::string& module, const std::string& name) {
    return op('c').raw(module + "\n" + name + "\n");
  }
  Pickle& stack_global(const std::string& module, const std::string& name) {
    return short_unicode(module).short_unicode(name).op(0x93);
  }
  Pickle& unicode(const std::string& text) { return op('X').le(text.size(), 4).raw(text); }
  Pickle& short_unicode(const std::string& text) { return op(0x8c).le(text.size(), 1).raw(text); }
  // The smallest encoding, as pickle picks it.
  Pickle& integer(int64_t value) {
    if (value >= 0 && value < 256) return op('K').le(static_cast<uint64_t>(value), 1);
    if (value >= 0 && value < 65536) return op('M').le(static_cast<uint64_t>(value), 2);
    if (value >= INT32_MIN && value <= INT32_MAX)
      return op('J').le(static_cast<uint64_t>(value), 4);
    return op(0x8a).op(8).le(static_cast<uint64_t>(value), 8);
  }
  Pickle& tuple(const std::vector<int64_t>& values) {
    if (values.empty()) return op(')');
    if (values.size() > 3) op('(');
    for (int64_t v : values) integer(v);
    return op(values.size() > 3 ? 't' : static_cast<uint8_t>(0x84 + values.size()));
  }
  Pickle& put(uint32_t index) { return index < 256 ? op('q').le(index, 1) : op('r').le(index, 4); }
  Pickle& get(uint32_t index) { return index < 256 ? op('h').le(index, 1) : op('j').le(index, 4); }
  Pickle& le(uint64_t value, size_t n) {
    for (size_t i = 0; i < n; ++i) bytes_ += static_cast<char>((value >> (8 * i)) & 0xff);
    return *this;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

struct View {
  std::string name;
  std::string storage_type;  // "FloatStorage", ...
  std::string key;
  int64_t storage_numel;
  int64_t offset;
  std::vector<int64_t> size;
  std::vector<int64_t> stride;
};

// A state dict the way torch.save (protocol 2) writes it: an OrderedDict filled by SETITEMS whose
// values are _rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict()).
std::string state_dict_pickle(const std::vector<View>& views) {
  Pickle p;
  p.proto(2).global("collections", "OrderedDict").put(0).op(')').op('R').put(1).op('(');
  for (const View& v : views) {
    p.unicode(v.name).global("torch._utils", "_rebuild_tensor_v2").op('(');
    p.op('(').unicode("storage").global("torch", v.storage_type).unicode(v.key).unicode("cpu");
    p.integer(v.storage_numel).op('t').op('Q');
    p.integer(v.offset).tuple(v.size).tuple(v.stride).op(0x89).get(0).op(')').op('R').op('t').op(
        'R');
  }
  // state_dict()'s `_metadata` attribute arrives as BUILD state; readers drop it.
  p.op('u').op('}').unicode("_metadata").get(0).op(')').op('R').unicode("").op('}');
  p.unicode("version").integer(1).op('s').op('s').op('s').op('b').op('.');
  return p.bytes();
}

TEST(TorchBin, ReadsSharedStridedAndScalarViews) {
  TempDir dir;
  std::vector<float> floats(12);
  for (size_t i = 0; i < floats.size(); ++i) floats[i] = static_cast<float>(i);
  const std::vector<int64_t> longs = {-5, 1LL << 40, 7};
  const std::vector<uint16_t> halves = {float_to_half(1.5f), float_to_half(-2.0f)};
  const std::vector<View> views = {
      {"matrix", "FloatStorage", "0", 12, 0, {3, 4}, {4, 1}},
      {"transposed", "FloatStorage", "0", 12, 0, {4, 3}, {1, 4}},
      {"strided", "FloatStorage", "0", 12, 5, {2}, {3}},
      {"scalar", "FloatStorage", "0", 12, 7, {}, {}},
      {"empty", "FloatStorage", "0", 12, 0, {0, 5}, {5, 1}},
      {"longs", "LongStorage", "1", 3, 0, {3}, {1}},
      {"halves", "HalfStorage", "2", 2, 1, {1, 1, 1, 1}, {1, 1, 1, 1}},
  };
  write_zip(dir / "model.bin", {{"archive/data.pkl", state_dict_pickle(views)},
                                {"archive/byteorder", "little"},
                                {"archive/data/0", raw_bytes(floats)},
                                {"archive/data/1", raw_bytes(longs)},
                                {"archive/data/2", raw_bytes(halves)}});

  const TensorMap tensors = read_torch_bin(dir / "model.bin");
  ASSERT_EQ(tensors.size(), views.size());
  const auto values = [&](const std::string& name) { return tensors.at(name).to_f64_vector(); };
  EXPECT_EQ(tensors.at("matrix").shape(), (Shape{3, 4}));
  EXPECT_EQ(values("matrix"), (std::vector<double>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}));
  EXPECT_EQ(tensors.at("transposed").shape(), (Shape{4, 3}));
  EXPECT_EQ(values("transposed"), (std::vector<double>{0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11}));
  EXPECT_EQ(values("strided"), (std::vector<double>{5, 8}));
  EXPECT_EQ(tensors.at("scalar").shape(), Shape{});
  EXPECT_EQ(values("scalar"), (std::vector<double>{7}));
  EXPECT_EQ(tensors.at("empty").shape(), (Shape{0, 5}));
  EXPECT_EQ(tensors.at("longs").dtype(), DType::I64);
  EXPECT_EQ(std::vector<int64_t>(tensors.at("longs").data<int64_t>(),
                                 tensors.at("longs").data<int64_t>() + 3),
            longs);
  EXPECT_EQ(tensors.at("halves").dtype(), DType::F16);
  EXPECT_EQ(values("halves"), (std::vector<double>{-2.0}));
}

// Protocol 4 spells the same things differently: FRAME, STACK_GLOBAL, SHORT_BINUNICODE, MEMOIZE,
// LONG1; the top level may be a plain dict, and any archive folder name works.
TEST(TorchBin, ReadsProtocol4AndAnyArchivePrefix) {
  TempDir dir;
  const std::vector<double> doubles = {0.25, -1.0, 3.0};
  Pickle body;
  body.op('}').op(0x94).short_unicode("w").op(0x94);
  body.stack_global("torch._utils", "_rebuild_tensor").op(0x94).op('(');
  body.op('(').short_unicode("storage").stack_global("torch", "DoubleStorage").short_unicode("k7");
  body.short_unicode("cuda:0").op(0x8a).op(1).op(3).op('t').op('Q');
  body.op(0x8a).op(1).op(1).op(0x8a).op(1).op(2).op(0x85).integer(1).op(0x85).op('t').op('R').op(
      's');
  // BUILD state exercising the remaining value opcodes: {"x": [0.5, None, True, False], "y": 2**40}
  body.op('}').short_unicode("x").op(']').op('G').raw(std::string("\x3f\xe0\0\0\0\0\0\0", 8));
  body.op('a').op('(').op('N').op(0x88).op(0x89).op('e').op('s').short_unicode("y").integer(1LL
                                                                                            << 40);
  body.op('s').op('b').op('.');
  Pickle p;
  p.proto(4).op(0x95).le(body.bytes().size(), 8).raw(body.bytes());
  write_zip(dir / "model.bin",
            {{"my.model-3/data.pkl", p.bytes()}, {"my.model-3/data/k7", raw_bytes(doubles)}});

  const TensorMap tensors = read_torch_bin(dir / "model.bin");
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_EQ(tensors.at("w").dtype(), DType::F64);
  EXPECT_EQ(tensors.at("w").to_f64_vector(), (std::vector<double>{-1.0, 3.0}));
}

TEST(TorchBin, ReadsTheFixtureWithLegacyBuffers) {
  const std::filesystem::path path =
      DIJIANG_SOURCE_DIR "/tests/fixtures/neox_parallel/bin/pytorch_model.bin";
  const TensorMap tensors = read_torch_bin(path);
  EXPECT_EQ(tensors.size(), 28u + 2 * 3);  // 28 parameters, 3 legacy buffers in each of 2 layers
  EXPECT_EQ(tensors.at("gpt_neox.embed_in.weight").shape(), (Shape{1000, 64}));
  EXPECT_EQ(tensors.at("gpt_neox.layers.0.attention.query_key_value.weight").shape(),
            (Shape{192, 64}));
  EXPECT_EQ(tensors.at("gpt_neox.layers.0.attention.bias").dtype(), DType::BOOL);
  EXPECT_EQ(tensors.at("gpt_neox.layers.1.attention.bias").dtype(), DType::U8);
  EXPECT_EQ(tensors.at("gpt_neox.layers.1.attention.bias").shape(), (Shape{1, 1, 128, 128}));
  EXPECT_EQ(tensors.at("gpt_neox.layers.0.attention.masked_bias").to_f64_vector(),
            (std::vector<double>{-1e9}));
  const std::vector<double> inv_freq =
      tensors.at("gpt_neox.layers.0.attention.rotary_emb.inv_freq").to_f64_vector();
  ASSERT_EQ(inv_freq.size(), 2u);  // rotary dims 4
  EXPECT_EQ(inv_freq[0], 1.0);
  EXPECT_NEAR(inv_freq[1], 0.01, 1e-9);
  // The mask is causal: row 1 sees columns 0 and 1 only.
  const uint8_t* mask = tensors.at("gpt_neox.layers.1.attention.bias").data<uint8_t>();
  EXPECT_EQ(mask[128 + 0], 1);
  EXPECT_EQ(mask[128 + 1], 1);
  EXPECT_EQ(mask[128 + 2], 0);
}

TEST(TorchBin, RejectsFilesThatAreNotZipArchives) {
  TempDir dir;
  std::mt19937 random(1234);
  std::string noise(4096, '\0');
  for (char& c : noise) c = static_cast<char>(random());
  write_bytes(dir / "noise.bin", noise);
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "noise.bin"); },
                         (dir / "noise.bin").string() + ": not a zip archive ("));
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "absent.bin"); }, "absent.bin: no such file"));

  // A real torch.save file cut short loses its central directory.
  const std::string fixture =
      read_bytes(DIJIANG_SOURCE_DIR "/tests/fixtures/neox_parallel/bin/pytorch_model.bin");
  ASSERT_FALSE(fixture.empty());
  for (size_t size : {fixture.size() / 2, fixture.size() - 10}) {
    write_bytes(dir / "cut.bin", std::string_view(fixture).substr(0, size));
    EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "cut.bin"); }, "not a zip archive ("))
        << size;
  }
}

TEST(TorchBin, RejectsArchivesWithoutOneDataPkl) {
  TempDir dir;
  write_zip(dir / "empty.bin", {{"archive/version", "3"}});
  EXPECT_TRUE(
      fails_with([&] { read_torch_bin(dir / "empty.bin"); }, "the archive holds no data.pkl"));
  const std::string pickle = state_dict_pickle({});
  write_zip(dir / "two.bin", {{"a/data.pkl", pickle}, {"b/data.pkl", pickle}});
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "two.bin"); }, "more than one data.pkl"));
  write_zip(dir / "big_endian.bin", {{"a/data.pkl", pickle}, {"a/byteorder", "big"}});
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "big_endian.bin"); }, "'big' byte order"));
}

TEST(TorchBin, RejectsDisallowedGlobals) {
  TempDir dir;
  // pickle.dumps of a __reduce__ returning (os.system, ("ls",)), protocol 2.
  const std::string os_system =
      "\x80\x02"
      "cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03."s;
  write_zip(dir / "evil.bin", {{"archive/data.pkl", os_system}});
  EXPECT_TRUE(
      fails_with([&] { read_torch_bin(dir / "evil.bin"); },
                 (dir / "evil.bin").string() + ": pickle global 'os.system' is not allowed"));

  Pickle eval;
  eval.proto(4).stack_global("builtins", "eval").short_unicode("1").op(0x85).op('R').op('.');
  write_zip(dir / "eval.bin", {{"archive/data.pkl", eval.bytes()}});
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "eval.bin"); },
                         "pickle global 'builtins.eval' is not allowed"));

  // An allowed global used as something it is not: a storage type is not callable.
  Pickle call_storage;
  call_storage.proto(2).global("torch", "FloatStorage").op(')').op('R').op('.');
  write_zip(dir / "storage.bin", {{"archive/data.pkl", call_storage.bytes()}});
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "storage.bin"); },
                         "'torch.FloatStorage' cannot be called"));
}

TEST(TorchBin, RejectsMalformedPickles) {
  TempDir dir;
  const auto expect_error = [&](const std::string& pickle, const std::string& error) {
    write_zip(dir / "bad.bin", {{"archive/data.pkl", pickle}});
    EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "bad.bin"); }, error)) << error;
  };
  // INST (0x69) imports and calls like GLOBAL + REDUCE: outside the allowed set.
  expect_error("\x80\x02}\x69os\nsystem\n."s, "pickle opcode 0x69 at offset 3 is not supported");
  expect_error("\x80\x02\x82\x01"s, "pickle opcode 0x82 at offset 2 is not supported");
  const std::string valid = state_dict_pickle({{"a", "FloatStorage", "0", 4, 0, {4}, {1}}});
  expect_error(valid.substr(0, valid.size() / 2), "pickle truncated");
  expect_error(valid.substr(0, valid.size() - 1), "pickle truncated");
  expect_error("\x80\x09}."s, "unsupported pickle protocol 9");
  expect_error("h\x05.", "pickle memo has no entry 5");
  expect_error("R.", "pickle stack underflow");
  expect_error("(u.", "pickle stack underflow");  // nothing to set items on
  expect_error("K\x01K\x02u.", "needs a MARK");
  expect_error("}(K\x01u.", "odd number of items");
  expect_error(
      "K\x01K\x02"
      "a.",
      "is not a list");
  expect_error(".", "pickle stops with an empty stack");
  expect_error("]\x94.", "not a dict of tensors");
  expect_error("}K\x01X\x01\x00\x00\x00ts."s, "the state dict has a key that is not a string");
  expect_error("}X\x01\x00\x00\x00tK\x01s."s, "state dict entry 't' is not a tensor");
  expect_error("}\x8a\x09" + std::string(9, '\x01') + ".", "has 9 bytes, more than 8");
  // A list holding itself, and 200,000 nested tuples: no recursion, no crash.
  expect_error(
      "]q\x00h\x00"
      "a."s,
      "not a dict of tensors");
  expect_error("N" + std::string(200'000, '\x85') + ".", "not a dict of tensors");
  expect_error(std::string(300'000, 'N') + ".", "pickle stack deeper than");

  Pickle persid;
  persid.proto(2).op('}').unicode("t").global("torch._utils", "_rebuild_tensor").op('(');
  persid.op('(')
      .unicode("storage")
      .global("collections", "OrderedDict")
      .unicode("0")
      .unicode("cpu");
  persid.integer(1).op('t').op('Q');
  expect_error(persid.bytes(), "'collections.OrderedDict' is not a storage type");
}

TEST(TorchBin, RejectsViewsBeyondTheirStorage) {
  TempDir dir;
  const std::vector<float> floats = {1, 2, 3, 4};
  const auto expect_error = [&](const View& view, const std::string& error) {
    write_zip(dir / "bad.bin", {{"archive/data.pkl", state_dict_pickle({view})},
                                {"archive/data/0", raw_bytes(floats)}});
    EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "bad.bin"); }, error)) << error;
  };
  expect_error({"long", "FloatStorage", "0", 4, 0, {5}, {1}},
               "tensor 'long': view exceeds storage '0' (offset 0, size [5], stride [1]; storage "
               "holds 4 elements)");
  expect_error({"shifted", "FloatStorage", "0", 4, 2, {2, 2}, {2, 1}}, "view exceeds storage");
  expect_error({"offset", "FloatStorage", "0", 4, 4, {}, {}}, "view exceeds storage");
  expect_error({"huge", "FloatStorage", "0", 4, 0, {2, 1LL << 62}, {1LL << 62, 1}},
               "view exceeds storage");
  expect_error({"negative", "FloatStorage", "0", 4, 0, {2}, {-1}}, "negative size or stride");
  expect_error({"rank", "FloatStorage", "0", 4, 0, {2, 2}, {1}}, "differ in rank");
  expect_error({"record", "FloatStorage", "0", 3, 0, {3}, {1}},
               "storage '0' holds 16 bytes but is declared as 3 elements of F32 (12 bytes)");
  expect_error({"record", "FloatStorage", "0", 5, 0, {5}, {1}},
               "storage '0' holds 16 bytes but is declared as 5 elements of F32 (20 bytes)");
  expect_error({"missing", "FloatStorage", "9", 4, 0, {4}, {1}},
               "tensor 'missing': the archive has no storage record 'archive/data/9'");

  write_zip(dir / "mixed.bin",
            {{"archive/data.pkl", state_dict_pickle({{"a", "FloatStorage", "0", 4, 0, {4}, {1}},
                                                     {"b", "IntStorage", "0", 4, 0, {4}, {1}}})},
             {"archive/data/0", raw_bytes(floats)}});
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "mixed.bin"); },
                         "storage '0' is declared with different types or sizes"));
  write_zip(dir / "twice.bin",
            {{"archive/data.pkl", state_dict_pickle({{"a", "FloatStorage", "0", 4, 0, {4}, {1}},
                                                     {"a", "FloatStorage", "0", 4, 1, {3}, {1}}})},
             {"archive/data/0", raw_bytes(floats)}});
  EXPECT_TRUE(fails_with([&] { read_torch_bin(dir / "twice.bin"); }, "tensor 'a' appears twice"));
}

}  // namespace
}  // namespace dj
