#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/unit/checkpoint_test_support.h"
#include "trainer/checkpoint/hf_directory.h"
#include "trainer/checkpoint/safetensors.h"

namespace dj {
namespace {

using test::fails_with;
using test::identical;
using test::TempDir;
using test::write_bytes;

const std::filesystem::path kFixtures = DIJIANG_SOURCE_DIR "/tests/fixtures/neox_parallel";

Tensor floats(std::vector<float> values) {
  const auto n = static_cast<int64_t>(values.size());
  return Tensor::from_vector(values, {n});
}

void write_config(const std::filesystem::path& dir) {
  write_bytes(dir / "config.json", R"({"model_type": "gpt_neox", "hidden_size": 4})");
}

void write_index(const std::filesystem::path& path, const nlohmann::json& weight_map) {
  write_bytes(path,
              nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", weight_map}}.dump());
}

TEST(HFDirectory, AllLayoutsGiveIdenticalTensors) {
  const HFCheckpoint f32 = read_hf_directory(kFixtures / "f32");
  EXPECT_EQ(f32.config.at("hidden_size"), 64);
  ASSERT_EQ(f32.tensors.size(), 28u);  // 4 + 12 per layer, 2 layers
  EXPECT_EQ(f32.tensors.at("embed_out.weight").shape(), (Shape{1000, 64}));
  EXPECT_EQ(f32.tensors.at("gpt_neox.layers.1.mlp.dense_4h_to_h.weight").shape(), (Shape{64, 256}));
  for (const auto& [name, tensor] : f32.tensors) EXPECT_EQ(tensor.dtype(), DType::F32) << name;

  // The .bin also holds the legacy buffers; they must be gone.
  for (const char* layout : {"bin", "sharded", "sharded_bin"}) {
    const HFCheckpoint other = read_hf_directory(kFixtures / layout);
    EXPECT_TRUE(identical(other.tensors, f32.tensors)) << layout;
    EXPECT_EQ(other.config.at("hidden_size"), 64) << layout;
  }
}

TEST(HFDirectory, HalfPrecisionLayoutsHoldTheRoundedWeights) {
  const TensorMap f32 = read_hf_directory(kFixtures / "f32").tensors;
  const struct {
    const char* layout;
    DType dtype;
  } cases[] = {{"f16", DType::F16}, {"bf16", DType::BF16}};
  for (const auto& c : cases) {
    const TensorMap half = read_hf_directory(kFixtures / c.layout).tensors;
    ASSERT_EQ(half.size(), f32.size()) << c.layout;
    TensorMap rounded;
    for (const auto& [name, tensor] : f32) rounded.emplace(name, tensor.to(c.dtype));
    EXPECT_TRUE(identical(half, rounded)) << c.layout;
  }
}

TEST(HFDirectory, RecognisesDirectories) {
  for (const char* layout : {"f32", "f16", "bf16", "bin", "sharded", "sharded_bin"})
    EXPECT_TRUE(is_hf_directory(kFixtures / layout)) << layout;
  TempDir dir;
  EXPECT_FALSE(is_hf_directory(dir.path()));
  write_config(dir.path());
  EXPECT_FALSE(is_hf_directory(dir.path()));  // no weights
  EXPECT_FALSE(is_hf_directory(dir / "config.json"));
  EXPECT_FALSE(is_hf_directory(dir / "absent"));
  write_bytes(dir / "pytorch_model.bin.index.json", "{}");
  EXPECT_TRUE(is_hf_directory(dir.path()));
}

TEST(HFDirectory, PrefersSafetensorsOverBin) {
  TempDir dir;
  write_config(dir.path());
  write_safetensors(dir / "model.safetensors", {{"w", floats({1, 2})}});
  write_bytes(dir / "pytorch_model.bin", "not read");
  const HFCheckpoint checkpoint = read_hf_directory(dir.path());
  EXPECT_EQ(checkpoint.config.at("model_type"), "gpt_neox");
  ASSERT_EQ(checkpoint.tensors.size(), 1u);
  EXPECT_EQ(checkpoint.tensors.at("w").to_f64_vector(), (std::vector<double>{1, 2}));
}

TEST(HFDirectory, SkipsExactlyTheLegacyBuffers) {
  TempDir dir;
  write_config(dir.path());
  TensorMap tensors;
  for (const char* name :
       {"gpt_neox.layers.0.attention.bias", "gpt_neox.layers.12.attention.masked_bias",
        "gpt_neox.layers.3.attention.rotary_emb.inv_freq",
        // Near misses, all kept:
        "gpt_neox.layers.0.attention.dense.bias", "gpt_neox.layers.x.attention.bias",
        "gpt_neox.layers..attention.bias", "gpt_neox.attention.bias",
        "gpt_neox.layers.0.attention.bias.extra", "other.layers.0.attention.bias",
        "gpt_neox.layers.0.attention.rotary_emb.inv_freq2"})
    tensors.emplace(name, floats({1}));
  write_safetensors(dir / "model.safetensors", tensors);
  const TensorMap read = read_hf_directory(dir.path()).tensors;
  EXPECT_EQ(read.size(), tensors.size() - 3);
  EXPECT_FALSE(read.contains("gpt_neox.layers.0.attention.bias"));
  EXPECT_FALSE(read.contains("gpt_neox.layers.12.attention.masked_bias"));
  EXPECT_FALSE(read.contains("gpt_neox.layers.3.attention.rotary_emb.inv_freq"));
  EXPECT_TRUE(read.contains("gpt_neox.layers.0.attention.dense.bias"));
}

TEST(HFDirectory, RejectsMissingOrBadConfig) {
  TempDir dir;
  write_safetensors(dir / "model.safetensors", {{"w", floats({1})}});
  EXPECT_TRUE(
      fails_with([&] { read_hf_directory(dir.path()); }, dir.path().string() + ": no config.json"));
  write_bytes(dir / "config.json", R"({"hidden_size": 4,)");
  EXPECT_TRUE(fails_with([&] { read_hf_directory(dir.path()); },
                         (dir / "config.json").string() + ": bad JSON"));
  write_bytes(dir / "config.json", "[4]");
  EXPECT_TRUE(fails_with([&] { read_hf_directory(dir.path()); }, "expected a JSON object"));
  EXPECT_TRUE(fails_with([&] { read_hf_directory(dir / "absent"); }, "not a directory"));
}

TEST(HFDirectory, RejectsDirectoriesWithoutWeights) {
  TempDir dir;
  write_config(dir.path());
  EXPECT_TRUE(fails_with([&] { read_hf_directory(dir.path()); }, "no weights (model.safetensors"));
}

TEST(HFDirectory, ErrorsInAWeightFileNameIt) {
  TempDir dir;
  write_config(dir.path());
  write_bytes(dir / "pytorch_model.bin", "not a zip");
  EXPECT_TRUE(fails_with([&] { read_hf_directory(dir.path()); },
                         (dir / "pytorch_model.bin").string() + ": not a zip archive"));
}

// Two safetensors shards: a, b in the first; c in the second.
class HFDirectoryShards : public ::testing::Test {
 protected:
  void SetUp() override {
    write_config(dir.path());
    write_safetensors(dir / "s1.safetensors", {{"a", floats({1})}, {"b", floats({2, 3})}});
    write_safetensors(dir / "s2.safetensors", {{"c", floats({4})}});
  }
  std::filesystem::path index() const { return dir / "model.safetensors.index.json"; }
  ::testing::AssertionResult fails_with(const std::string& expected) const {
    return test::fails_with([&] { read_hf_directory(dir.path()); }, expected);
  }
  TempDir dir;
};

TEST_F(HFDirectoryShards, ReadsAConsistentIndex) {
  write_index(index(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  const TensorMap tensors = read_hf_directory(dir.path()).tensors;
  EXPECT_EQ(tensors.size(), 3u);
  EXPECT_EQ(tensors.at("b").to_f64_vector(), (std::vector<double>{2, 3}));
}

TEST_F(HFDirectoryShards, RejectsAnIndexNamingAMissingShard) {
  write_index(index(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s3.safetensors"}});
  EXPECT_TRUE(
      fails_with(index().string() + ": shard 's3.safetensors' (holding 'c') does not exist"));
}

TEST_F(HFDirectoryShards, RejectsATensorMissingFromItsShard) {
  write_index(index(), {{"a", "s1.safetensors"},
                        {"b", "s1.safetensors"},
                        {"c", "s2.safetensors"},
                        {"d", "s2.safetensors"}});
  EXPECT_TRUE(fails_with("tensor 'd' is missing from shard 's2.safetensors'"));
}

TEST_F(HFDirectoryShards, RejectsAShardTensorTheIndexDoesNotList) {
  write_index(index(), {{"a", "s1.safetensors"}, {"c", "s2.safetensors"}});
  EXPECT_TRUE(fails_with("shard 's1.safetensors' holds tensor 'b', which the index does not list"));
  write_index(index(), {{"a", "s1.safetensors"}, {"b", "s2.safetensors"}, {"c", "s2.safetensors"}});
  EXPECT_TRUE(fails_with(
      "shard 's1.safetensors' holds tensor 'b', which the index assigns to 's2.safetensors'"));
}

TEST_F(HFDirectoryShards, RejectsATensorInTwoShards) {
  write_safetensors(dir / "s2.safetensors", {{"b", floats({2, 3})}, {"c", floats({4})}});
  write_index(index(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  EXPECT_TRUE(
      fails_with("tensor 'b' is held by both shard 's1.safetensors' and shard 's2.safetensors'"));
}

TEST_F(HFDirectoryShards, RejectsMalformedIndexes) {
  write_bytes(index(), R"({"weight_map": )");
  EXPECT_TRUE(fails_with(index().string() + ": bad JSON"));
  write_bytes(index(), R"({"metadata": {}})");
  EXPECT_TRUE(fails_with("no \"weight_map\" object"));
  write_index(index(), nlohmann::json::object());
  EXPECT_TRUE(fails_with("the weight_map lists no tensors"));
  write_index(index(), {{"a", 1}});
  EXPECT_TRUE(fails_with("weight_map entry for 'a' is not a file name"));
  write_index(index(), {{"a", "../s1.safetensors"}});
  EXPECT_TRUE(fails_with("is not a file name in the directory"));
}

TEST_F(HFDirectoryShards, ErrorsInAShardNameIt) {
  write_bytes(dir / "s2.safetensors", "short");
  write_index(index(), {{"a", "s1.safetensors"}, {"b", "s1.safetensors"}, {"c", "s2.safetensors"}});
  EXPECT_TRUE(fails_with((dir / "s2.safetensors").string() + ": truncated"));
}

}  // namespace
}  // namespace dj
