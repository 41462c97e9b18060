// Flat (per-rank, ZeRO-sharded) checkpoints: any range reads back exactly across rank files,
// merge and split are bit-exact inverses of the single-process checkpoint, and every malformed
// directory is refused with a message naming the file.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nlohmann/json.hpp>

#include "checkpoint_test_support.h"
#include "kernels/core/error.h"
#include "model_test_support.h"
#include "trainer/checkpoint/checksum.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/native.h"
#include "trainer/model/parameters.h"
#include "trainer/model/source.h"

namespace dj {
namespace {

namespace fs = std::filesystem;
using test::fails_with;
using test::identical;

// The three flat buffers of a run.
struct Buffers {
  std::vector<float> params, m, v;
  const std::vector<float>& of(const std::string& dataset) const {
    return dataset == kFlatParameters ? params : dataset == kFlatMomentM ? m : v;
  }
};

// Random bit patterns (NaN payloads and subnormals included): the format must keep bits.
std::vector<float> random_values(int64_t n, unsigned seed) {
  std::mt19937 random(seed);
  std::vector<float> values(static_cast<size_t>(n));
  for (float& value : values) {
    const uint32_t bits = random();
    std::memcpy(&value, &bits, sizeof bits);
  }
  return values;
}

Buffers random_buffers(int64_t total, unsigned seed) {
  return {random_values(total, seed), random_values(total, seed + 1), random_values(total, seed + 2)};
}

nlohmann::json sample_config() { return {{"hidden_size", 8}, {"model_type", "gpt_neox"}}; }
nlohmann::json sample_metadata(int64_t step = 7) {
  return {{"kind", "training"}, {"step", step}, {"data_epoch", 0}, {"data_position", 56}};
}

FlatShardHeader header_for(int rank, int world, int64_t begin, int64_t end, int64_t total,
                           nlohmann::json metadata = sample_metadata(),
                           nlohmann::json config = sample_config()) {
  FlatShardHeader header;
  header.rank = rank;
  header.world = world;
  header.begin = begin;
  header.end = end;
  header.total = total;
  header.config = std::move(config);
  header.metadata = std::move(metadata);
  return header;
}

void write_rank(const fs::path& staging, const Buffers& b, const FlatShardHeader& header) {
  const auto at = static_cast<size_t>(header.begin);
  write_flat_shard(staging, header, b.params.data() + at, b.m.data() + at, b.v.data() + at);
}

// Writes `b` as a balanced flat checkpoint of `world` ranks at `dir`, as the ranks of a run do.
void write_flat(const fs::path& dir, const Buffers& b, int world,
                const nlohmann::json& config = sample_config(),
                const nlohmann::json& metadata = sample_metadata()) {
  const fs::path staging = flat_staging_dir(dir);
  reset_flat_staging_dir(staging);
  const auto total = static_cast<int64_t>(b.params.size());
  for (int rank = 0; rank < world; ++rank) {
    const auto [begin, end] = flat_shard_range(total, rank, world);
    write_rank(staging, b, header_for(rank, world, begin, end, total, metadata, config));
  }
  finish_flat_checkpoint(staging, dir, world);
}

// Replaces one rank file of a complete checkpoint with a file written from `header`.
void replace_rank(const fs::path& dir, const Buffers& b, const FlatShardHeader& header) {
  const fs::path scratch = dir.parent_path() / ".scratch.partial";
  reset_flat_staging_dir(scratch);
  write_rank(scratch, b, header);
  const std::string name = flat_shard_name(header.rank, header.world);
  fs::rename(scratch / name, dir / name);
  clear_flat_staging_dir(scratch);
}

void expect_range(const FlatCheckpointReader& reader, const Buffers& b, const std::string& dataset,
                  int64_t begin, int64_t end) {
  std::vector<float> out(static_cast<size_t>(end - begin) + 1, 0.0f);
  const float sentinel = 12345.0f;
  out.back() = sentinel;
  reader.read(dataset, begin, end, out.data());
  if (end > begin) {
    ASSERT_EQ(std::memcmp(out.data(), b.of(dataset).data() + begin,
                          static_cast<size_t>(end - begin) * sizeof(float)),
              0)
        << dataset << " [" << begin << ", " << end << ")";
  }
  ASSERT_EQ(out.back(), sentinel) << "wrote past the range";
}

class FlatCheckpointTest : public ::testing::Test {
 protected:
  test::TempDir dir_;
};

// ---------------------------------------------------------------------------------------------
// Ranges

TEST(FlatShardRange, IsBalancedAndContiguous) {
  EXPECT_EQ(flat_shard_range(10, 0, 4), std::make_pair(int64_t{0}, int64_t{2}));
  EXPECT_EQ(flat_shard_range(10, 1, 4), std::make_pair(int64_t{2}, int64_t{5}));
  EXPECT_EQ(flat_shard_range(10, 3, 4), std::make_pair(int64_t{7}, int64_t{10}));
  EXPECT_EQ(flat_shard_range(3, 0, 4), std::make_pair(int64_t{0}, int64_t{0}));  // owns nothing
  // No overflow where total * rank would exceed int64.
  const int64_t huge = int64_t{1} << 61;
  EXPECT_EQ(flat_shard_range(huge, 7, 8).first, huge / 8 * 7);
  EXPECT_EQ(flat_shard_range(huge, 7, 8).second, huge);
  EXPECT_TRUE(fails_with([] { flat_shard_range(10, 4, 4); }, "no rank 4 of 4"));
}

TEST(FlatShardNames, StagingAndShardNames) {
  EXPECT_EQ(flat_shard_name(2, 16), "rank-00002-of-00016.h5");
  EXPECT_EQ(flat_staging_dir("runs/x/ckpt-00000020"), fs::path("runs/x/.ckpt-00000020.partial"));
  EXPECT_EQ(flat_staging_dir("runs/x/ckpt/"), fs::path("runs/x/.ckpt.partial"));
  EXPECT_EQ(flat_staging_dir("ckpt"), fs::path(".ckpt.partial"));
}

// Every range, across every rank boundary, for worlds 1..4 and totals that do not divide (and
// ranks that own nothing: 2 or 3 values over 4 ranks).
TEST_F(FlatCheckpointTest, AnyRangeReadsBackExactly) {
  for (const int64_t total : {0, 2, 3, 10, 23}) {
    for (int world = 1; world <= 4; ++world) {
      SCOPED_TRACE(testing::Message() << "total " << total << ", world " << world);
      const Buffers b = random_buffers(total, static_cast<unsigned>(total * 10 + world));
      const fs::path dir = dir_ / fmt::format("t{}-w{}", total, world);
      write_flat(dir, b, world);
      EXPECT_TRUE(is_flat_checkpoint(dir));
      EXPECT_TRUE(fs::is_regular_file(dir / "COMPLETE"));
      EXPECT_FALSE(fs::exists(flat_staging_dir(dir)));
      const FlatCheckpointReader reader(dir);
      EXPECT_EQ(reader.world(), world);
      EXPECT_EQ(reader.total(), total);
      EXPECT_EQ(reader.config(), sample_config());
      EXPECT_EQ(reader.metadata(), sample_metadata());
      for (int rank = 0; rank < world; ++rank)
        EXPECT_EQ(reader.shard_range(rank), flat_shard_range(total, rank, world));
      for (const char* dataset : {kFlatParameters, kFlatMomentM, kFlatMomentV})
        for (int64_t begin = 0; begin <= total; ++begin)
          for (int64_t end = begin; end <= total; ++end)
            ASSERT_NO_FATAL_FAILURE(expect_range(reader, b, dataset, begin, end));
    }
  }
}

// Uneven slices written by hand (the caller chooses them), all ranks at once from threads.
TEST_F(FlatCheckpointTest, ConcurrentWritersAndUnevenSlices) {
  const Buffers b = random_buffers(1000, 5);
  const std::vector<std::pair<int64_t, int64_t>> slices = {{0, 1}, {1, 1}, {1, 998}, {998, 1000}};
  const fs::path dir = dir_ / "ckpt";
  const fs::path staging = flat_staging_dir(dir);
  reset_flat_staging_dir(staging);
  std::vector<std::thread> ranks;
  for (int rank = 0; rank < 4; ++rank)
    ranks.emplace_back([&, rank] {
      const auto [begin, end] = slices[static_cast<size_t>(rank)];
      write_rank(staging, b, header_for(rank, 4, begin, end, 1000));
    });
  for (auto& thread : ranks) thread.join();
  // A writer's leftover temporary file is not a rank file and does not travel.
  test::write_bytes(staging / ".rank-00001-of-00004.h5.tmp-1-0", "junk");
  finish_flat_checkpoint(staging, dir, 4);
  const FlatCheckpointReader reader(dir);
  EXPECT_EQ(reader.shard_range(1), std::make_pair(int64_t{1}, int64_t{1}));
  expect_range(reader, b, kFlatMomentV, 0, 1000);
  expect_range(reader, b, kFlatParameters, 0, 2);
  expect_range(reader, b, kFlatMomentM, 997, 999);
  size_t entries = 0;
  for ([[maybe_unused]] const auto& entry : fs::directory_iterator(dir)) ++entries;
  EXPECT_EQ(entries, 5u);  // four rank files and COMPLETE
}

TEST_F(FlatCheckpointTest, ReadRefusesBadRangesAndNames) {
  const Buffers b = random_buffers(10, 1);
  write_flat(dir_ / "ckpt", b, 2);
  const FlatCheckpointReader reader(dir_ / "ckpt");
  float out[16];
  EXPECT_TRUE(fails_with([&] { reader.read(kFlatParameters, 5, 11, out); }, "not within [0, 10)"));
  EXPECT_TRUE(fails_with([&] { reader.read(kFlatParameters, 6, 5, out); }, "not within"));
  EXPECT_TRUE(fails_with([&] { reader.read("optimizer.w", 0, 1, out); }, "no dataset 'optimizer.w'"));
}

// ---------------------------------------------------------------------------------------------
// Finishing and staging

TEST_F(FlatCheckpointTest, FinishReplacesAnEarlierCheckpointOnly) {
  const fs::path dir = dir_ / "ckpt";
  write_flat(dir, random_buffers(10, 1), 2);
  const Buffers newer = random_buffers(12, 2);
  write_flat(dir, newer, 3, sample_config(), sample_metadata(9));
  const FlatCheckpointReader reader(dir);
  EXPECT_EQ(reader.world(), 3);
  EXPECT_EQ(reader.metadata().at("step"), 9);
  expect_range(reader, newer, kFlatParameters, 0, 12);

  const fs::path other = dir_ / "other";
  fs::create_directories(other);
  test::write_bytes(other / "keep", "x");
  EXPECT_TRUE(fails_with([&] { write_flat(other, newer, 2); }, "refusing to replace it"));
  EXPECT_TRUE(fs::exists(other / "keep"));
  EXPECT_TRUE(fs::exists(flat_staging_dir(other)));  // kept: the caller may retry elsewhere
}

TEST_F(FlatCheckpointTest, FinishRefusesAnIncompleteSet) {
  const Buffers b = random_buffers(10, 1);
  const fs::path dir = dir_ / "ckpt";
  const fs::path staging = flat_staging_dir(dir);
  reset_flat_staging_dir(staging);
  write_rank(staging, b, header_for(0, 3, 0, 3, 10));
  write_rank(staging, b, header_for(2, 3, 6, 10, 10));
  EXPECT_TRUE(fails_with([&] { finish_flat_checkpoint(staging, dir, 3); },
                         staging.string() + ": missing rank file rank-00001-of-00003.h5"));
  EXPECT_FALSE(fs::exists(dir));
  write_rank(staging, b, header_for(1, 3, 3, 7, 10));  // overlaps rank 2
  EXPECT_TRUE(fails_with([&] { finish_flat_checkpoint(staging, dir, 3); },
                         (staging / "rank-00002-of-00003.h5").string() +
                             ": overlap: begins at 6 but rank-00001-of-00003.h5 ends at 7"));
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fails_with([&] { finish_flat_checkpoint(staging, dir, 2); }, "unexpected rank file"));
}

TEST_F(FlatCheckpointTest, StagingHelpers) {
  const fs::path staging = flat_staging_dir(dir_ / "ckpt");
  reset_flat_staging_dir(staging);
  test::write_bytes(staging / "rank-00000-of-00002.h5", "stale");
  reset_flat_staging_dir(staging);  // a stale one from an interrupted save is emptied
  EXPECT_TRUE(fs::is_directory(staging));
  EXPECT_TRUE(fs::is_empty(staging));
  clear_flat_staging_dir(staging);
  EXPECT_FALSE(fs::exists(staging));
  fs::create_directories(dir_ / "precious");
  EXPECT_TRUE(fails_with([&] { reset_flat_staging_dir(dir_ / "precious"); },
                         "not a staging directory name"));
  EXPECT_TRUE(fs::exists(dir_ / "precious"));
  EXPECT_TRUE(fails_with([&] { write_rank(dir_ / "absent", random_buffers(1, 1), header_for(0, 1, 0, 1, 1)); },
                         "the staging directory does not exist"));
}

TEST_F(FlatCheckpointTest, WriteRefusesBadHeaders) {
  const fs::path staging = flat_staging_dir(dir_ / "ckpt");
  reset_flat_staging_dir(staging);
  const Buffers b = random_buffers(10, 1);
  EXPECT_TRUE(fails_with([&] { write_rank(staging, b, header_for(2, 2, 0, 1, 10)); }, "rank 2 is not in 0..1"));
  EXPECT_TRUE(fails_with([&] { write_rank(staging, b, header_for(0, 0, 0, 1, 10)); }, "rank count 0"));
  EXPECT_TRUE(fails_with([&] { write_rank(staging, b, header_for(0, 2, 4, 11, 10)); },
                         "range [4, 11) is not within [0, 10)"));
  EXPECT_TRUE(fails_with([&] { write_flat_shard(staging, header_for(0, 2, 0, 5, 10), nullptr, nullptr, nullptr); },
                         "no values to write"));
  EXPECT_TRUE(fs::is_empty(staging));
}

// ---------------------------------------------------------------------------------------------
// Malformed directories: each refused, naming the file

class MalformedFlatCheckpoint : public FlatCheckpointTest {
 protected:
  void SetUp() override { write_flat(ckpt_, b_, 3); }  // [0, 3) [3, 6) [6, 10)
  std::string error() {
    try {
      FlatCheckpointReader reader(ckpt_);
    } catch (const Error& e) {
      return e.what();
    }
    ADD_FAILURE() << "the reader accepted it";
    return "";
  }
  fs::path rank_file(int rank) const { return ckpt_ / flat_shard_name(rank, 3); }

  Buffers b_ = random_buffers(10, 3);
  fs::path ckpt_ = dir_ / "ckpt";
};

#define EXPECT_ERROR(expected) EXPECT_PRED_FORMAT2(::testing::IsSubstring, expected, error())

TEST_F(MalformedFlatCheckpoint, MissingCompleteMarker) {
  fs::remove(ckpt_ / "COMPLETE");
  EXPECT_ERROR(ckpt_.string() + ": no COMPLETE marker: the flat checkpoint is incomplete");
  EXPECT_TRUE(is_flat_checkpoint(ckpt_));  // still recognisable, just not readable
}

TEST_F(MalformedFlatCheckpoint, BadCompleteMarker) {
  test::write_bytes(ckpt_ / "COMPLETE", "{\"shards\": 3, \"format_version\": 1}");
  EXPECT_ERROR((ckpt_ / "COMPLETE").string() + ": not a flat checkpoint marker");
  test::write_bytes(ckpt_ / "COMPLETE",
                    R"({"format": "dijiang-flat-shard", "format_version": 1, "world": 3, "total": 11})");
  EXPECT_ERROR(ckpt_.string() + ": COMPLETE says 11 values but the rank files hold 10");
}

TEST_F(MalformedFlatCheckpoint, MissingShard) {
  fs::remove(rank_file(1));
  EXPECT_ERROR(ckpt_.string() + ": missing rank file rank-00001-of-00003.h5 (the checkpoint has 3 ranks)");
}

TEST_F(MalformedFlatCheckpoint, ExtraShard) {
  fs::copy_file(rank_file(2), ckpt_ / "rank-00003-of-00004.h5");
  EXPECT_ERROR(ckpt_.string() + ": unexpected rank file rank-00003-of-00004.h5 in a checkpoint of 3 ranks");
}

TEST_F(MalformedFlatCheckpoint, DuplicateShard) {
  fs::copy_file(rank_file(1), ckpt_ / "rank-1-of-3.h5");
  EXPECT_ERROR("duplicate rank files for rank 1");
}

TEST_F(MalformedFlatCheckpoint, BadlyNamedShard) {
  test::write_bytes(ckpt_ / "rank-x.h5", "");
  EXPECT_ERROR(ckpt_.string() + ": unexpected file rank-x.h5");
}

TEST_F(MalformedFlatCheckpoint, SwappedShards) {
  fs::rename(rank_file(1), ckpt_ / "tmp");
  fs::rename(rank_file(2), rank_file(1));
  fs::rename(ckpt_ / "tmp", rank_file(2));
  EXPECT_ERROR(rank_file(1).string() + ": holds rank 2 of 3, but its name says rank 1 of 3");
}

TEST_F(MalformedFlatCheckpoint, Gap) {
  replace_rank(ckpt_, b_, header_for(1, 3, 4, 6, 10));
  EXPECT_ERROR(rank_file(1).string() + ": gap: begins at 4 but rank-00000-of-00003.h5 ends at 3");
}

TEST_F(MalformedFlatCheckpoint, Overlap) {
  replace_rank(ckpt_, b_, header_for(1, 3, 2, 6, 10));
  EXPECT_ERROR(rank_file(1).string() + ": overlap: begins at 2 but rank-00000-of-00003.h5 ends at 3");
}

TEST_F(MalformedFlatCheckpoint, GapAtTheEnd) {
  replace_rank(ckpt_, b_, header_for(2, 3, 6, 9, 10));
  EXPECT_ERROR(rank_file(2).string() + ": gap: the last rank ends at 9 but the total is 10");
}

TEST_F(MalformedFlatCheckpoint, MismatchedMetadata) {
  replace_rank(ckpt_, b_, header_for(2, 3, 6, 10, 10, sample_metadata(8)));
  EXPECT_ERROR(rank_file(2).string() + ": metadata differs from rank-00000-of-00003.h5's");
}

TEST_F(MalformedFlatCheckpoint, MismatchedConfig) {
  replace_rank(ckpt_, b_, header_for(1, 3, 3, 6, 10, sample_metadata(), {{"hidden_size", 9}}));
  EXPECT_ERROR(rank_file(1).string() + ": config differs from rank-00000-of-00003.h5's");
}

TEST_F(MalformedFlatCheckpoint, MismatchedTotal) {
  const Buffers longer = random_buffers(11, 3);
  replace_rank(ckpt_, longer, header_for(2, 3, 6, 11, 11));
  EXPECT_ERROR(rank_file(2).string() + ": total is 11, but rank-00000-of-00003.h5 says 10");
}

TEST_F(MalformedFlatCheckpoint, TruncatedFile) {
  fs::resize_file(rank_file(1), fs::file_size(rank_file(1)) / 2);
  const std::string message = error();
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, rank_file(1).string() + ": holds", message);
  EXPECT_PRED_FORMAT2(::testing::IsSubstring, "the file is truncated", message);
}

TEST_F(MalformedFlatCheckpoint, NotHdf5) {
  test::write_bytes(rank_file(0), "");
  EXPECT_ERROR(rank_file(0).string() + ": is empty");
  test::write_bytes(rank_file(0), "definitely not HDF5");
  EXPECT_ERROR(rank_file(0).string() + ": not a checkpoint file");
}

// The `end` attribute says 3 values, the datasets hold 4.
TEST_F(MalformedFlatCheckpoint, WrongDatasetLength) {
  replace_rank(ckpt_, b_, header_for(1, 3, 3, 7, 10));
  const hid_t file = H5Fopen(rank_file(1).c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  const hid_t attribute = H5Aopen(file, "end", H5P_DEFAULT);
  const int64_t end = 6;
  EXPECT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &end), 0);
  H5Aclose(attribute);
  H5Fclose(file);
  seal_checkpoint_file(rank_file(1));  // so that the checksum does not stop the reader first
  EXPECT_ERROR(rank_file(1).string() + ": dataset 'parameters' holds 4 values; the rank's range needs 3");
}

TEST_F(MalformedFlatCheckpoint, WrongDtype) {
  const hid_t file = H5Fopen(rank_file(2).c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  EXPECT_GE(H5Ldelete(file, "optimizer.v", H5P_DEFAULT), 0);
  const hsize_t length = 4;
  const double values[4] = {1, 2, 3, 4};
  const hid_t space = H5Screate_simple(1, &length, nullptr);
  const hid_t dataset = H5Dcreate2(file, "optimizer.v", H5T_IEEE_F64LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  EXPECT_GE(H5Dwrite(dataset, H5T_NATIVE_DOUBLE, H5S_ALL, H5S_ALL, H5P_DEFAULT, values), 0);
  H5Dclose(dataset);
  H5Sclose(space);
  H5Fclose(file);
  seal_checkpoint_file(rank_file(2));
  EXPECT_ERROR(rank_file(2).string() + ": dataset 'optimizer.v' is not float32");
}

TEST_F(MalformedFlatCheckpoint, MissingDataset) {
  const hid_t file = H5Fopen(rank_file(0).c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(file, 0);
  EXPECT_GE(H5Ldelete(file, "optimizer.m", H5P_DEFAULT), 0);
  H5Fclose(file);
  seal_checkpoint_file(rank_file(0));
  EXPECT_ERROR(rank_file(0).string() + ": missing dataset 'optimizer.m'");
}

TEST_F(FlatCheckpointTest, NotADirectory) {
  EXPECT_TRUE(fails_with([&] { FlatCheckpointReader reader(dir_ / "absent"); }, "no such file or directory"));
  test::write_bytes(dir_ / "file.h5", "x");
  EXPECT_TRUE(fails_with([&] { FlatCheckpointReader reader(dir_ / "file.h5"); }, "not a directory"));
  EXPECT_FALSE(is_flat_checkpoint(dir_ / "file.h5"));
  EXPECT_FALSE(is_flat_checkpoint(dir_.path()));
}

// ---------------------------------------------------------------------------------------------
// Merge and split

// A GPT-NeoX model (DiJiang attention, so fixed and optional tensors are in the layout too) and
// the training checkpoint the single-process trainer would write for `b`.
struct TrainingState {
  ModelConfig config;
  Buffers buffers;
  NativeCheckpoint checkpoint;
};

TrainingState training_state(unsigned seed) {
  TrainingState state;
  state.config = test::tiny_config(true, "gelu");
  state.config.attention = AttentionKind::DiJiang;
  state.config.dijiang.feature_weights = true;
  const ParameterLayout layout = ParameterLayout::gpt_neox(state.config);
  state.buffers = random_buffers(layout.total(), seed);
  state.checkpoint.config = state.config.to_hf_json();
  state.checkpoint.metadata = {{"kind", "training"}, {"step", 20},      {"data_epoch", 1},
                               {"data_position", 96}, {"bad_steps", 0}, {"experiment", "seed: 1\n"}};
  for (const auto& view : layout.views()) {
    for (const auto& [prefix, flat] : {std::pair{"", &state.buffers.params},
                                       std::pair{"optimizer.m.", &state.buffers.m},
                                       std::pair{"optimizer.v.", &state.buffers.v}}) {
      Tensor tensor(DType::F32, view.shape);
      std::memcpy(tensor.bytes(), flat->data() + view.offset, tensor.nbytes());
      state.checkpoint.tensors.emplace(prefix + view.name, std::move(tensor));
    }
  }
  return state;
}

TEST_F(FlatCheckpointTest, MergeEqualsTheSingleProcessCheckpoint) {
  const TrainingState state = training_state(11);
  for (int world = 1; world <= 4; ++world) {
    const fs::path dir = dir_ / fmt::format("w{}", world);
    write_flat(dir, state.buffers, world, state.checkpoint.config, state.checkpoint.metadata);
    const NativeCheckpoint merged = merge_flat_checkpoint(dir);
    EXPECT_TRUE(identical(merged.tensors, state.checkpoint.tensors)) << "world " << world;
    EXPECT_EQ(merged.config, state.checkpoint.config);
    EXPECT_EQ(merged.metadata, state.checkpoint.metadata);
    // The merged file is byte for byte the file the trainer writes.
    write_native_checkpoint(dir_ / "merged.h5", merged);
    write_native_checkpoint(dir_ / "trainer.h5", state.checkpoint);
    EXPECT_EQ(test::read_bytes(dir_ / "merged.h5"), test::read_bytes(dir_ / "trainer.h5"));
  }
}

TEST_F(FlatCheckpointTest, MergeRefusesAConfigThatDoesNotFitTheValues) {
  const TrainingState state = training_state(11);
  Buffers shorter = state.buffers;
  shorter.params.pop_back();
  shorter.m.pop_back();
  shorter.v.pop_back();
  write_flat(dir_ / "ckpt", shorter, 2, state.checkpoint.config, state.checkpoint.metadata);
  EXPECT_TRUE(fails_with([&] { merge_flat_checkpoint(dir_ / "ckpt"); }, "but the rank files hold"));
}

TEST_F(FlatCheckpointTest, SplitThenMergeIsBitIdentical) {
  const TrainingState state = training_state(12);
  const fs::path file = dir_ / "ckpt-00000020.h5";
  write_native_checkpoint(file, state.checkpoint);
  for (int ranks : {1, 3, 5}) {
    const fs::path dir = dir_ / fmt::format("split{}", ranks);
    split_to_flat_checkpoint(file, dir, ranks);
    const FlatCheckpointReader reader(dir);
    EXPECT_EQ(reader.world(), ranks);
    EXPECT_EQ(reader.total(), static_cast<int64_t>(state.buffers.params.size()));
    for (int rank = 0; rank < ranks; ++rank)
      EXPECT_EQ(reader.shard_range(rank), flat_shard_range(reader.total(), rank, ranks));
    expect_range(reader, state.buffers, kFlatMomentV, 0, reader.total());
    const NativeCheckpoint merged = merge_flat_checkpoint(dir);
    write_native_checkpoint(dir_ / "merged.h5", merged);
    EXPECT_EQ(test::read_bytes(dir_ / "merged.h5"), test::read_bytes(file)) << ranks << " ranks";
  }
  // Resharding a flat checkpoint, in place of an existing one.
  split_to_flat_checkpoint(dir_ / "split3", dir_ / "split5", 2);
  EXPECT_EQ(FlatCheckpointReader(dir_ / "split5").world(), 2);
  EXPECT_TRUE(identical(merge_flat_checkpoint(dir_ / "split5").tensors, state.checkpoint.tensors));
}

TEST_F(FlatCheckpointTest, SplitRefusesWhatCannotResume) {
  TrainingState state = training_state(13);
  const fs::path file = dir_ / "ckpt.h5";
  EXPECT_TRUE(fails_with([&] { split_to_flat_checkpoint(file, dir_ / "out", 0); },
                         (dir_ / "out").string() + ": rank count 0 is not in 1..99999"));
  EXPECT_TRUE(fails_with([&] { split_to_flat_checkpoint(file, dir_ / "out", 2); }, file.string()));

  NativeCheckpoint model_only = state.checkpoint;
  model_only.metadata = {{"converted_from", "x"}};
  write_native_checkpoint(file, model_only);
  EXPECT_TRUE(fails_with([&] { split_to_flat_checkpoint(file, dir_ / "out", 2); },
                         file.string() + ": not a training checkpoint (metadata kind: none)"));

  NativeCheckpoint no_state = state.checkpoint;
  std::erase_if(no_state.tensors, [](const auto& entry) { return entry.first.starts_with("optimizer."); });
  write_native_checkpoint(file, no_state);
  EXPECT_TRUE(fails_with([&] { split_to_flat_checkpoint(file, dir_ / "out", 2); },
                         file.string() + ": has no optimizer state"));

  NativeCheckpoint partial = state.checkpoint;
  partial.tensors.erase("optimizer.v.gpt_neox.final_layer_norm.bias");
  write_native_checkpoint(file, partial);
  EXPECT_TRUE(fails_with([&] { split_to_flat_checkpoint(file, dir_ / "out", 2); },
                         "tensor 'optimizer.v.gpt_neox.final_layer_norm.bias' is missing"));

  NativeCheckpoint half = state.checkpoint;
  half.tensors["gpt_neox.final_layer_norm.bias"] = half.tensors["gpt_neox.final_layer_norm.bias"].to(DType::BF16);
  write_native_checkpoint(file, half);
  EXPECT_TRUE(fails_with([&] { split_to_flat_checkpoint(file, dir_ / "out", 2); },
                         "tensor 'gpt_neox.final_layer_norm.bias' is BF16; training checkpoints hold F32"));

  write_native_checkpoint(file, state.checkpoint);
  fs::create_directories(dir_ / "taken");
  test::write_bytes(dir_ / "taken" / "keep", "x");
  EXPECT_TRUE(fails_with([&] { split_to_flat_checkpoint(file, dir_ / "taken", 2); },
                         "directory exists and is not a flat checkpoint"));
  EXPECT_FALSE(fs::exists(dir_ / "out"));
  for (const auto& entry : fs::directory_iterator(dir_.path()))
    EXPECT_FALSE(entry.path().filename().string().starts_with(".")) << entry.path();
}

// Every command reads models through read_model_source: a flat directory is a native source with
// its optimizer state apart, not mistaken for a tensor-sharded native directory.
TEST_F(FlatCheckpointTest, ReadsAsAModelSource) {
  const TrainingState state = training_state(14);
  write_flat(dir_ / "ckpt", state.buffers, 3, state.checkpoint.config, state.checkpoint.metadata);
  const ModelSource source = read_model_source(dir_ / "ckpt");
  EXPECT_EQ(source.kind, ModelSource::Kind::Native);
  EXPECT_EQ(source.metadata, state.checkpoint.metadata);
  EXPECT_TRUE(source.config.is_dijiang());
  const ParameterLayout layout = ParameterLayout::gpt_neox(source.config);
  EXPECT_EQ(source.tensors.size(), layout.views().size());
  EXPECT_EQ(source.optimizer_state.size(), 2 * layout.views().size());
  TensorMap all = source.tensors;
  all.insert(source.optimizer_state.begin(), source.optimizer_state.end());
  EXPECT_TRUE(identical(all, state.checkpoint.tensors));
  GPTNeoX<float> model(source.config);
  model.load(source.tensors, source.path.string());  // a loadable model

  fs::remove(dir_ / "ckpt" / "COMPLETE");
  EXPECT_TRUE(fails_with([&] { read_model_source(dir_ / "ckpt"); }, "no COMPLETE marker"));
}

}  // namespace
}  // namespace dj
