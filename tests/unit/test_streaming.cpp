// Streaming reads and writes (trainer/checkpoint/stored_tensor.h): stored tensors read by rows and
// converted in pieces give the bytes of the eager path, and a streamed `convert` / `export` writes
// the same files, byte for byte, as reading everything first does, for every input format.
#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "checkpoint_test_support.h"
#include "fixture_paths.h"
#include "trainer/checkpoint/native.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/torch_bin.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/source.h"

namespace dj {
namespace {

namespace fs = std::filesystem;
using test::fails_with;
using test::identical;
using test::TempDir;

Tensor random_tensor(DType dtype, Shape shape, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<double> values(static_cast<size_t>(shape_numel(shape)));
  for (double& v : values) v = normal(rng);
  return Tensor::from_vector(values, std::move(shape)).to(dtype);
}

Tensor rows_of(const Tensor& tensor, int64_t first, int64_t count) {
  Shape shape = tensor.shape();
  shape[0] = count;
  Tensor out(tensor.dtype(), shape);
  const size_t row_bytes = tensor.nbytes() / static_cast<size_t>(tensor.shape()[0]);
  std::memcpy(out.bytes(), tensor.bytes() + static_cast<size_t>(first) * row_bytes, out.nbytes());
  return out;
}

// Every way of reading `stored` agrees with the tensor it holds.
void expect_reads_like(const StoredTensor& stored, const Tensor& want) {
  EXPECT_EQ(stored.dtype(), want.dtype());
  EXPECT_EQ(stored.shape(), want.shape());
  EXPECT_TRUE(identical({{"t", stored.read()}}, {{"t", want}}));
  for (DType dtype : {DType::F64, DType::F32, DType::F16, DType::BF16})
    EXPECT_TRUE(identical({{"t", stored.read(dtype)}}, {{"t", want.to(dtype)}})) << dtype_name(dtype);
  if (want.shape().empty()) return;
  const int64_t rows = want.shape()[0];
  std::vector<std::byte> sink(want.nbytes() + 64);
  EXPECT_TRUE(fails_with([&] { stored.read_rows(rows, 1, sink.data()); }, "outside a tensor"));
  EXPECT_TRUE(fails_with([&] { stored.read_rows(-1, 1, sink.data()); }, "outside a tensor"));
  if (rows == 0) return;
  for (const auto& [first, count] : std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {rows / 3, rows / 2}, {rows - 1, 1}}) {
    Tensor part(want.dtype(), rows_of(want, first, count).shape());
    stored.read_rows(first, count, part.bytes());
    EXPECT_TRUE(identical({{"t", part}}, {{"t", rows_of(want, first, count)}})) << first << "+" << count;
  }
  EXPECT_TRUE(fails_with([&] { stored.read_rows(rows - 1, 2, sink.data()); }, "outside a tensor"));
}

TEST(StoredTensor, EveryReaderServesRowsAndConversions) {
  // "big" is 18 MB of F32: converting it takes several pieces of StoredTensor::kConvertBytes.
  const TensorMap tensors = {{"big", random_tensor(DType::F32, {3000, 1500}, 1)},
                             {"half", random_tensor(DType::F16, {7, 5, 3}, 2)},
                             {"brain", random_tensor(DType::BF16, {11}, 3)},
                             {"scalar", random_tensor(DType::F64, {}, 4)},
                             {"empty", Tensor(DType::F32, {0, 4})}};
  ASSERT_GT(tensors.at("big").nbytes(), StoredTensor::kConvertBytes);
  const TempDir dir;
  write_safetensors(dir / "t.safetensors", tensors);
  write_native_checkpoint(dir / "t.h5", NativeCheckpoint{nlohmann::json::object(), nlohmann::json::object(), tensors});
  write_native_checkpoint_directory(dir / "shards", NativeCheckpoint{nlohmann::json::object(), nlohmann::json::object(), tensors}, 3);

  const StoredTensorMap safetensors = open_safetensors(dir / "t.safetensors");
  const StoredTensorMap native = open_native_checkpoint(dir / "t.h5").tensors;
  const StoredTensorMap shards = open_native_checkpoint(dir / "shards").tensors;
  for (const auto& entry : tensors) {
    const std::string& name = entry.first;
    const Tensor& tensor = entry.second;
    SCOPED_TRACE(name);
    expect_reads_like(safetensors.at(name), tensor);
    expect_reads_like(native.at(name), tensor);
    expect_reads_like(shards.at(name), tensor);
    expect_reads_like(StoredTensor::in_memory(tensor), tensor);
    expect_reads_like(StoredTensor::made_by(tensor.dtype(), tensor.shape(), [tensor] { return tensor; }), tensor);
  }
  // The eager readers are the same readers followed by read_all.
  EXPECT_TRUE(identical(read_all(safetensors), tensors));
  EXPECT_TRUE(identical(read_native_checkpoint(dir / "shards").tensors, tensors));
}

TEST(StoredTensor, TorchBinRowsComeFromRanges) {
  // pytorch_model.bin with the legacy buffers too: every tensor's rows, read alone (a byte range of
  // its storage record), equal the rows of the whole tensor.
  const StoredTensorMap stored = open_torch_bin(test::fixture("neox_parallel/bin/pytorch_model.bin"));
  ASSERT_FALSE(stored.empty());
  for (const auto& [name, tensor] : stored) {
    SCOPED_TRACE(name);
    expect_reads_like(tensor, tensor.read());
  }
  EXPECT_TRUE(identical(read_all(stored), read_torch_bin(test::fixture("neox_parallel/bin/pytorch_model.bin"))));
}

TEST(StoredTensor, OpeningReadsNoDataAndAReadNamesTheFile) {
  const TempDir dir;
  const Tensor tensor = random_tensor(DType::F32, {64, 64}, 5);
  write_safetensors(dir / "t.safetensors", {{"w", tensor}});
  // Cut the data region short: the header still describes it, so opening succeeds.
  const std::string bytes = test::read_bytes(dir / "t.safetensors");
  test::write_bytes(dir / "t.safetensors", bytes.substr(0, bytes.size() - 100));
  EXPECT_TRUE(fails_with([&] { (void)open_safetensors(dir / "t.safetensors"); }, "beyond the data region"));
  // A header that is whole with the data file replaced after opening: the read fails, naming it.
  test::write_bytes(dir / "u.safetensors", bytes);
  const StoredTensorMap opened = open_safetensors(dir / "u.safetensors");
  test::write_bytes(dir / "u.safetensors", bytes.substr(0, bytes.size() - 100));
  EXPECT_TRUE(fails_with([&] { (void)opened.at("w").read(); }, (dir / "u.safetensors").string()));
}

TEST(StoredTensor, APlanMadeWrongIsRefused) {
  const TempDir dir;
  TensorPlan plan;
  plan["w"] = {DType::F32, {2, 2}, [] { return Tensor(DType::F32, {2, 3}); }};
  EXPECT_TRUE(fails_with([&] { write_planned_safetensors(dir / "t.safetensors", plan); }, "planned as F32 [2, 2]"));
  EXPECT_FALSE(fs::exists(dir / "t.safetensors"));
  EXPECT_TRUE(fails_with([&] { write_native_checkpoint(dir / "t.h5", nlohmann::json::object(), nlohmann::json::object(), plan); }, "planned as F32 [2, 2]"));
  EXPECT_FALSE(fs::exists(dir / "t.h5"));
}

// ---- convert and export, streamed against eager ------------------------------------------------

struct Case {
  std::string source;  // fixture directory, or "native" / "native_dir" (made from neox_parallel/f32)
  DType dtype;
  bool dijiang;
};

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string name = info.param.source + "_" + std::string(dtype_name(info.param.dtype)) +
                     (info.param.dijiang ? "_dijiang" : "");
  for (char& c : name)
    if (c == '/') c = '_';
  return name;
}

class StreamedConversion : public ::testing::TestWithParam<Case> {};

TEST_P(StreamedConversion, WritesTheBytesOfTheEagerPath) {
  const Case& c = GetParam();
  const TempDir dir;
  fs::path source = test::fixture(c.source);
  if (c.source == "native" || c.source == "native_dir") {
    const ModelSource hf = read_model_source(test::fixture("neox_parallel/f32"));
    const NativeCheckpoint checkpoint{hf.config.to_hf_json(hf.hf_config, "float32"), {{"note", "made by the test"}},
                                      validated_tensors(hf, DType::F32)};
    source = dir / c.source;
    if (c.source == "native")
      write_native_checkpoint(source, checkpoint);
    else
      write_native_checkpoint_directory(source, checkpoint, 4);
  }
  DiJiangOptions options;
  options.seed = 7;
  options.feature_weights = c.source == "neox_sequential/f32";

  ModelSource eager = read_model_source(source);
  StoredModelSource streamed = open_model_source(source);
  if (c.dijiang) {
    convert_to_dijiang(eager, options);
    convert_to_dijiang(streamed, options);
  }
  const nlohmann::json config = eager.config.to_hf_json(eager.hf_config, "float32");
  const nlohmann::json metadata = {{"converted_from", source.string()}};
  const TensorPlan plan = validated_plan(streamed, c.dtype);
  const NativeCheckpoint checkpoint{config, metadata, validated_tensors(eager, c.dtype)};

  write_native_checkpoint(dir / "eager.h5", checkpoint);
  write_native_checkpoint(dir / "streamed.h5", config, metadata, plan);
  EXPECT_EQ(test::read_bytes(dir / "eager.h5"), test::read_bytes(dir / "streamed.h5"));
  write_native_checkpoint_directory(dir / "eager_dir", checkpoint, 3);
  write_native_checkpoint_directory(dir / "streamed_dir", config, metadata, plan, 3);
  for (const fs::path& shard : native_checkpoint_files(dir / "eager_dir"))
    EXPECT_EQ(test::read_bytes(shard), test::read_bytes(dir / "streamed_dir" / shard.filename())) << shard;

  // export: the reference layout for DiJiang models, the tensors as they are otherwise.
  if (!options.feature_weights || !c.dijiang) {
    const TensorMap exported = eager.config.is_dijiang()
                                   ? export_interchange(checkpoint.tensors, eager.config, c.dtype)
                                   : checkpoint.tensors;
    const TensorPlan streamed_export =
        streamed.config.is_dijiang() ? export_interchange(plan, streamed.config, c.dtype) : plan;
    write_safetensors(dir / "eager.safetensors", exported, {{"format", "pt"}});
    write_planned_safetensors(dir / "streamed.safetensors", streamed_export, {{"format", "pt"}});
    EXPECT_EQ(test::read_bytes(dir / "eager.safetensors"), test::read_bytes(dir / "streamed.safetensors"));
  }
}

std::vector<Case> cases() {
  std::vector<Case> out;
  for (const char* source : {"neox_parallel/f32", "neox_parallel/f16", "neox_parallel/bf16", "neox_parallel/bin",
                             "neox_parallel/sharded", "neox_parallel/sharded_bin", "neox_sequential/f32", "native",
                             "native_dir"})
    for (DType dtype : {DType::F32, DType::BF16})
      for (bool dijiang : {false, true}) out.push_back({source, dtype, dijiang});
  out.push_back({"neox_odd/f32", DType::F16, true});
  out.push_back({"neox_odd/f32", DType::F64, false});
  return out;
}

INSTANTIATE_TEST_SUITE_P(Sources, StreamedConversion, ::testing::ValuesIn(cases()), case_name);

}  // namespace
}  // namespace dj
