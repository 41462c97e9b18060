// Checksummed checkpoint files: every byte of a written file is covered, damage of any kind is a
// dj::Error naming the file before HDF5 reads it, files without a checksum still load, and
// `--resume` passes over damaged checkpoints for the newest intact one.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <hdf5.h>
#include <sys/stat.h>
#include <utime.h>

#include <filesystem>
#include <random>
#include <string>

#include "checkpoint_test_support.h"
#include "kernels/core/error.h"
#include "trainer/checkpoint/checksum.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/native.h"
#include "trainer/checkpoint/verify.h"
#include "trainer/train/trainer.h"

namespace dj {
namespace {

namespace fs = std::filesystem;
using test::fails_with;
using test::read_bytes;
using test::write_bytes;

NativeCheckpoint small_checkpoint(int64_t values = 300) {
  NativeCheckpoint checkpoint;
  checkpoint.config = {{"hidden_size", 8}};
  checkpoint.metadata = {{"step", 3}};
  Tensor tensor(DType::F32, {values});
  for (int64_t i = 0; i < values; ++i) tensor.data<float>()[i] = static_cast<float>(i) * 0.25f;
  checkpoint.tensors["gpt_neox.embed_in.weight"] = std::move(tensor);
  return checkpoint;
}

// Moves the modification time back by a second, so that an edit which leaves the size alone still
// looks changed to the verified-file cache (file systems with coarse timestamps).
void touch_back(const fs::path& path) {
  struct stat status {};
  ASSERT_EQ(::stat(path.c_str(), &status), 0);
  const utimbuf times{status.st_atime, status.st_mtime - 1};
  ASSERT_EQ(::utime(path.c_str(), &times), 0);
}

void flip_byte(const fs::path& path, size_t at) {
  std::string bytes = read_bytes(path);
  bytes[at] = static_cast<char>(bytes[at] ^ 0x10);
  write_bytes(path, bytes);
  touch_back(path);
}

TEST(Checksum, WrittenFilesCarryAVerifiableChecksum) {
  const test::TempDir dir;
  const fs::path file = dir / "ckpt.h5";
  write_native_checkpoint(file, small_checkpoint());
  const std::string bytes = read_bytes(file);
  ASSERT_GT(bytes.size(), kChecksumBlockBytes);
  EXPECT_TRUE(bytes.starts_with("dijiang-checksum 1\nxxh3-128 "));
  // HDF5 proper begins after the block.
  EXPECT_EQ(bytes.substr(kChecksumBlockBytes, 4), "\x89HDF");
  const FileChecksum checksum = verify_checkpoint_file(file);
  EXPECT_TRUE(checksum.sealed);
  EXPECT_EQ(checksum.bytes, bytes.size());
  EXPECT_EQ(checksum.digest.size(), 32u);
  EXPECT_NE(bytes.find("bytes " + std::to_string(bytes.size()) + "\n"), std::string::npos);
  EXPECT_TRUE(looks_like_checkpoint_file(file));
  EXPECT_TRUE(is_native_checkpoint(file));

  // The same content gives the same bytes, checksum included.
  write_native_checkpoint(dir / "again.h5", small_checkpoint());
  EXPECT_EQ(read_bytes(dir / "again.h5"), bytes);
  EXPECT_EQ(read_native_checkpoint(file).tensors.at("gpt_neox.embed_in.weight").numel(), 300);
}

// Any changed byte, in the data, in HDF5's own structures or in the checksum block (padding
// included), is reported before anything is parsed.
TEST(Checksum, EveryChangedByteIsDetected) {
  const test::TempDir dir;
  const fs::path original = dir / "original.h5";
  write_native_checkpoint(original, small_checkpoint());
  const std::string bytes = read_bytes(original);
  std::mt19937 random(20261202);
  std::vector<size_t> positions = {0, 17, 30, 60, 100, kChecksumBlockBytes - 1, kChecksumBlockBytes,
                                   kChecksumBlockBytes + 8, bytes.size() - 1};
  for (int i = 0; i < 40; ++i) positions.push_back(random() % bytes.size());
  for (const size_t at : positions) {
    const fs::path copy = dir / fmt::format("flipped-{}.h5", at);
    write_bytes(copy, bytes);
    flip_byte(copy, at);
    try {
      read_native_checkpoint(copy);
      ADD_FAILURE() << "a flipped byte at " << at << " went unnoticed";
    } catch (const Error& e) {
      EXPECT_TRUE(std::string(e.what()).starts_with(copy.string() + ": ")) << e.what();
    }
    EXPECT_THROW(verify_checkpoint(copy), Error) << at;
  }
}

TEST(Checksum, TruncatedAndExtendedFilesAreNamedAsSuch) {
  const test::TempDir dir;
  const fs::path file = dir / "ckpt.h5";
  write_native_checkpoint(file, small_checkpoint());
  const std::string bytes = read_bytes(file);
  write_bytes(file, bytes.substr(0, bytes.size() - 100));
  EXPECT_TRUE(fails_with([&] { verify_checkpoint_file(file); }, "the file is truncated"));
  write_bytes(file, bytes + "x");
  EXPECT_TRUE(fails_with([&] { verify_checkpoint_file(file); }, "the file is longer than written"));
  write_bytes(file, bytes.substr(0, 300));
  EXPECT_TRUE(fails_with([&] { verify_checkpoint_file(file); }, "its checksum header is damaged"));
  write_bytes(file, "");
  EXPECT_TRUE(fails_with([&] { verify_checkpoint_file(file); }, file.string() + ": is empty"));
}

// The cache of verified files never hides a change: a file rewritten in place is hashed again.
TEST(Checksum, AChangedFileIsVerifiedAgain) {
  const test::TempDir dir;
  const fs::path file = dir / "ckpt.h5";
  write_native_checkpoint(file, small_checkpoint());
  verify_checkpoint_file(file);
  verify_checkpoint_file(file);
  flip_byte(file, read_bytes(file).size() - 10);
  EXPECT_TRUE(fails_with([&] { verify_checkpoint_file(file); }, "checksum mismatch"));
}

// HDF5 files without the block (older versions of this program, h5py) load, unverified.
TEST(Checksum, FilesWithoutAChecksumStillLoad) {
  const test::TempDir dir;
  const fs::path file = dir / "plain.h5";
  const hid_t raw = H5Fcreate(file.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(raw, 0);
  H5Fclose(raw);
  const FileChecksum checksum = verify_checkpoint_file(file);
  EXPECT_FALSE(checksum.sealed);
  EXPECT_EQ(checksum.bytes, fs::file_size(file));
  EXPECT_TRUE(is_native_checkpoint(file));
  // Such a file cannot be sealed after the fact: it has no room for the checksum.
  EXPECT_TRUE(fails_with([&] { seal_checkpoint_file(file); }, "has no 512-byte block for its checksum"));
}

// A file edited on purpose is sealed again; sealing twice changes nothing.
TEST(Checksum, SealingAgainAfterAnEdit) {
  const test::TempDir dir;
  const fs::path file = dir / "ckpt.h5";
  write_native_checkpoint(file, small_checkpoint());
  const std::string before = read_bytes(file);
  EXPECT_EQ(seal_checkpoint_file(file).digest, verify_checkpoint_file(file).digest);
  EXPECT_EQ(read_bytes(file), before);
  const hid_t raw = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(raw, 0);
  const hid_t attribute = H5Aopen(raw, "format_version", H5P_DEFAULT);
  const int64_t version = 1;
  EXPECT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &version), 0);
  H5Aclose(attribute);
  H5Fclose(raw);
  seal_checkpoint_file(file);
  EXPECT_NO_THROW(read_native_checkpoint(file));
}

TEST(Checksum, DirectoriesAreVerifiedFileByFile) {
  const test::TempDir dir;
  write_native_checkpoint_directory(dir / "sharded", small_checkpoint(), 1);
  const std::vector<VerifiedFile> files = verify_checkpoint(dir / "sharded");
  ASSERT_EQ(files.size(), 1u);
  EXPECT_TRUE(files[0].checksum.sealed);
  fs::remove(dir / "sharded" / "COMPLETE");
  EXPECT_TRUE(fails_with([&] { verify_checkpoint(dir / "sharded"); }, "no COMPLETE marker"));

  // A flat checkpoint of two ranks; rank 1's file damaged.
  const fs::path staging = flat_staging_dir(dir / "flat");
  reset_flat_staging_dir(staging);
  const float values[4] = {1, 2, 3, 4};
  for (int rank = 0; rank < 2; ++rank) {
    FlatShardHeader header;
    header.rank = rank;
    header.world = 2;
    header.begin = 2 * rank;
    header.end = 2 * rank + 2;
    header.total = 4;
    header.config = {{"hidden_size", 8}};
    write_flat_shard(staging, header, values + 2 * rank, values, values);
  }
  finish_flat_checkpoint(staging, dir / "flat", 2);
  EXPECT_EQ(verify_checkpoint(dir / "flat").size(), 2u);
  const fs::path rank1 = dir / "flat" / flat_shard_name(1, 2);
  flip_byte(rank1, fs::file_size(rank1) - 3);
  EXPECT_TRUE(fails_with([&] { verify_checkpoint(dir / "flat"); }, rank1.string() + ": checksum mismatch"));
  EXPECT_TRUE(fails_with([&] { FlatCheckpointReader reader(dir / "flat"); }, rank1.string() + ": checksum mismatch"));
}

TEST(Checksum, ResumePassesOverDamagedCheckpoints) {
  const test::TempDir dir;
  EXPECT_EQ(resume_checkpoint(dir.path()), fs::path());
  for (const char* name : {"ckpt-00000002.h5", "ckpt-00000004.h5", "ckpt-00000006.h5"})
    write_native_checkpoint(dir / name, small_checkpoint());
  EXPECT_EQ(resume_checkpoint(dir.path()), dir / "ckpt-00000006.h5");
  flip_byte(dir / "ckpt-00000006.h5", 700);
  fs::resize_file(dir / "ckpt-00000004.h5", 1000);
  EXPECT_EQ(resume_checkpoint(dir.path()), dir / "ckpt-00000002.h5");
  EXPECT_EQ(latest_checkpoint(dir.path()), dir / "ckpt-00000006.h5");
  write_bytes(dir / "ckpt-00000002.h5", "");
  EXPECT_TRUE(fails_with([&] { resume_checkpoint(dir.path()); },
                         "none of the 3 checkpoints in " + dir.path().string() + " is intact"));
}

}  // namespace
}  // namespace dj
