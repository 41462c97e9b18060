#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "trainer/checkpoint/checksum.h"
#include "trainer/checkpoint/native.h"

namespace dj {
namespace {

namespace fs = std::filesystem;

constexpr DType kAllDTypes[] = {DType::F64, DType::F32, DType::F16, DType::BF16, DType::I64,
                                DType::I32, DType::I16, DType::I8,  DType::U64,  DType::U32,
                                DType::U16, DType::U8,  DType::BOOL};

// Random bytes, so float tensors include NaN payloads and subnormals: the format must keep bits.
Tensor random_tensor(DType dtype, Shape shape, unsigned seed) {
  Tensor tensor(dtype, std::move(shape));
  std::mt19937 random(seed);
  for (size_t i = 0; i < tensor.nbytes(); ++i)
    tensor.bytes()[i] = static_cast<std::byte>(dtype == DType::BOOL ? random() & 1u : random());
  return tensor;
}

void expect_same_tensors(const TensorMap& actual, const TensorMap& expected) {
  ASSERT_EQ(actual.size(), expected.size());
  for (const auto& [name, tensor] : expected) {
    const auto it = actual.find(name);
    ASSERT_NE(it, actual.end()) << name;
    EXPECT_EQ(it->second.dtype(), tensor.dtype()) << name;
    EXPECT_EQ(it->second.shape(), tensor.shape()) << name;
    ASSERT_EQ(it->second.nbytes(), tensor.nbytes()) << name;
    EXPECT_EQ(std::memcmp(it->second.bytes(), tensor.bytes(), tensor.nbytes()), 0) << name;
  }
}

NativeCheckpoint sample_checkpoint(unsigned seed = 1) {
  NativeCheckpoint checkpoint;
  checkpoint.config = {{"hidden_size", 8}, {"architectures", {"GPTNeoXForCausalLM"}}};
  checkpoint.metadata = {{"step", 10}};
  checkpoint.tensors["gpt_neox.embed_in.weight"] = random_tensor(DType::F32, {16, 8}, seed);
  checkpoint.tensors["gpt_neox.final_layer_norm.bias"] = random_tensor(DType::BF16, {8}, seed + 1);
  checkpoint.tensors["gpt_neox.layers.0.mlp.dense_h_to_4h.weight"] =
      random_tensor(DType::F16, {32, 8}, seed + 2);
  return checkpoint;
}

// The message of the dj::Error that `action` throws, or "" (and a test failure) if it throws none.
template <typename Action>
std::string error_of(Action action) {
  try {
    action();
  } catch (const Error& error) {
    return error.what();
  }
  ADD_FAILURE() << "no dj::Error thrown";
  return "";
}

#define EXPECT_CONTAINS(text, part) \
  EXPECT_NE(std::string(text).find(part), std::string::npos) << "in: " << (text)

std::set<std::string> listing(const fs::path& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir))
    names.insert(entry.path().filename().string());
  return names;
}

std::string file_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Files the native writer would never produce, written with the plain HDF5 C API.
class RawFile {
 public:
  explicit RawFile(const fs::path& path)
      : id_(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) {
    EXPECT_GE(id_, 0);
  }
  RawFile(const RawFile&) = delete;
  RawFile& operator=(const RawFile&) = delete;
  ~RawFile() { H5Fclose(id_); }

  // What the native writer stores at the root, with `format` as given.
  void write_header(const std::string& format) {
    string_attribute(id_, "format", format);
    const int64_t version = 1;
    attribute(id_, "format_version", H5T_STD_I64LE, &version);
    string_attribute(id_, "config", R"({"hidden_size": 8})");
    string_attribute(id_, "metadata", "{}");
  }
  // A one-dimensional dataset of `count` elements of `type`, from `data` of `memory_type` (by
  // default `type`); returns it for the caller to close.
  hid_t dataset(const char* name, hid_t type, hsize_t count, const void* data,
                hid_t memory_type = H5I_INVALID_HID) {
    const hid_t space = H5Screate_simple(1, &count, nullptr);
    const hid_t dataset = H5Dcreate2(id_, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(dataset, 0) << name;
    const hid_t memory = memory_type == H5I_INVALID_HID ? type : memory_type;
    EXPECT_GE(H5Dwrite(dataset, memory, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0) << name;
    H5Sclose(space);
    return dataset;
  }
  static void attribute(hid_t object, const char* name, hid_t type, const void* value) {
    const hid_t space = H5Screate(H5S_SCALAR);
    const hid_t attribute = H5Acreate2(object, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    EXPECT_GE(H5Awrite(attribute, type, value), 0) << name;
    H5Aclose(attribute);
    H5Sclose(space);
  }
  static void string_attribute(hid_t object, const char* name, const std::string& value) {
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, H5T_VARIABLE);
    H5Tset_cset(type, H5T_CSET_UTF8);
    const char* text = value.c_str();
    attribute(object, name, type, &text);
    H5Tclose(type);
  }
  hid_t id() const { return id_; }

 private:
  hid_t id_;
};

class NativeCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* test = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = fs::temp_directory_path() / fmt::format("dj-native-{}-{}", test->name(), ::getpid());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path dir_;
};

TEST_F(NativeCheckpointTest, RoundTripsEveryDTypeScalarAndEmptyTensors) {
  NativeCheckpoint checkpoint = sample_checkpoint();
  unsigned seed = 100;
  for (DType dtype : kAllDTypes)
    checkpoint.tensors[fmt::format("all.{}", dtype_name(dtype))] =
        random_tensor(dtype, {3, 5}, ++seed);
  checkpoint.tensors["scalar.f32"] = random_tensor(DType::F32, {}, ++seed);
  checkpoint.tensors["scalar.bool"] = random_tensor(DType::BOOL, {}, ++seed);
  checkpoint.tensors["empty.f32"] = Tensor(DType::F32, {0});
  checkpoint.tensors["empty.bf16"] = Tensor(DType::BF16, {4, 0, 2});

  const fs::path file = dir_ / "ckpt.h5";
  write_native_checkpoint(file, checkpoint);
  EXPECT_EQ(listing(dir_), std::set<std::string>{"ckpt.h5"});  // no temporary left behind
  EXPECT_TRUE(is_native_checkpoint(file));

  const NativeCheckpoint loaded = read_native_checkpoint(file);
  expect_same_tensors(loaded.tensors, checkpoint.tensors);
  EXPECT_EQ(loaded.config, checkpoint.config);
  EXPECT_EQ(loaded.metadata, checkpoint.metadata);
}

TEST_F(NativeCheckpointTest, RoundTripsLargeUnicodeConfigAndMetadata) {
  NativeCheckpoint checkpoint = sample_checkpoint();
  // Over 64 KiB, the most an attribute can hold inline.
  checkpoint.config["notes"] = std::string(100'000, 'x');
  checkpoint.config["name"] = "Pythia \u00e9\u4e2d \U0001F600";
  checkpoint.metadata = {{"nested", {{"list", {1, 2.5, nullptr, "s"}}}}};
  const fs::path file = dir_ / "ckpt.h5";
  write_native_checkpoint(file, checkpoint);
  const NativeCheckpoint loaded = read_native_checkpoint(file);
  EXPECT_EQ(loaded.config, checkpoint.config);
  EXPECT_EQ(loaded.metadata, checkpoint.metadata);
}

TEST_F(NativeCheckpointTest, SameCheckpointGivesSameBytes) {
  write_native_checkpoint(dir_ / "a.h5", sample_checkpoint());
  write_native_checkpoint(dir_ / "b.h5", sample_checkpoint());
  EXPECT_EQ(file_bytes(dir_ / "a.h5"), file_bytes(dir_ / "b.h5"));
}

TEST_F(NativeCheckpointTest, ReplacesAnExistingFile) {
  const fs::path file = dir_ / "ckpt.h5";
  write_native_checkpoint(file, sample_checkpoint(1));
  write_native_checkpoint(file, sample_checkpoint(2));
  expect_same_tensors(read_native_checkpoint(file).tensors, sample_checkpoint(2).tensors);
  EXPECT_EQ(listing(dir_), std::set<std::string>{"ckpt.h5"});
}

TEST_F(NativeCheckpointTest, DirectoryWithThreeShardsRoundTrips) {
  NativeCheckpoint checkpoint = sample_checkpoint();
  for (int layer = 0; layer < 6; ++layer)
    checkpoint.tensors[fmt::format("gpt_neox.layers.{}.attention.dense.weight", layer)] =
        random_tensor(DType::F32, {8, 8}, static_cast<unsigned>(layer));
  const fs::path dir = dir_ / "ckpt";
  write_native_checkpoint_directory(dir, checkpoint, 3);

  EXPECT_EQ(listing(dir_), std::set<std::string>{"ckpt"});
  EXPECT_EQ(listing(dir),
            (std::set<std::string>{"COMPLETE", "shard-00000-of-00003.h5", "shard-00001-of-00003.h5",
                                   "shard-00002-of-00003.h5"}));
  const auto marker = nlohmann::json::parse(file_bytes(dir / "COMPLETE"));
  EXPECT_EQ(marker, (nlohmann::json{{"shards", 3}, {"format_version", 1}}));
  EXPECT_TRUE(is_native_checkpoint(dir));

  // Every shard is a complete file of its own with the config and a share of the tensors.
  size_t held = 0;
  for (int i = 0; i < 3; ++i) {
    const NativeCheckpoint shard =
        read_native_checkpoint(dir / fmt::format("shard-{:05d}-of-00003.h5", i));
    EXPECT_EQ(shard.config, checkpoint.config);
    EXPECT_FALSE(shard.tensors.empty()) << "shard " << i;
    held += shard.tensors.size();
  }
  EXPECT_EQ(held, checkpoint.tensors.size());

  const NativeCheckpoint loaded = read_native_checkpoint(dir);
  expect_same_tensors(loaded.tensors, checkpoint.tensors);
  EXPECT_EQ(loaded.config, checkpoint.config);
  EXPECT_EQ(loaded.metadata, checkpoint.metadata);
}

TEST_F(NativeCheckpointTest, DirectoryReplacesPreviousCheckpoint) {
  const fs::path dir = dir_ / "ckpt";
  write_native_checkpoint_directory(dir, sample_checkpoint(1), 3);
  write_native_checkpoint_directory(dir_ / "ckpt/", sample_checkpoint(2), 2);
  expect_same_tensors(read_native_checkpoint(dir).tensors, sample_checkpoint(2).tensors);
  EXPECT_EQ(listing(dir).size(), 3u);  // two shards and COMPLETE: nothing left of the old one
  EXPECT_EQ(listing(dir_), std::set<std::string>{"ckpt"});
}

TEST_F(NativeCheckpointTest, DirectoryRefusesToReplaceSomethingElse) {
  const fs::path dir = dir_ / "ckpt";
  fs::create_directory(dir);
  std::ofstream(dir / "notes.txt") << "keep me";
  EXPECT_CONTAINS(error_of([&] { write_native_checkpoint_directory(dir, sample_checkpoint(), 2); }),
                  "refusing to replace");
  EXPECT_EQ(file_bytes(dir / "notes.txt"), "keep me");
  EXPECT_EQ(listing(dir_), std::set<std::string>{"ckpt"});
}

TEST_F(NativeCheckpointTest, DirectoryWithoutCompleteMarkerIsRefused) {
  const fs::path dir = dir_ / "ckpt";
  write_native_checkpoint_directory(dir, sample_checkpoint(), 3);
  fs::remove(dir / "COMPLETE");
  const std::string message = error_of([&] { read_native_checkpoint(dir); });
  EXPECT_CONTAINS(message, dir.string());
  EXPECT_CONTAINS(message, "no COMPLETE marker");
  EXPECT_TRUE(is_native_checkpoint(dir));  // still recognisable, just not readable
}

TEST_F(NativeCheckpointTest, DirectoryWithMissingShardIsRefused) {
  const fs::path dir = dir_ / "ckpt";
  write_native_checkpoint_directory(dir, sample_checkpoint(), 3);
  fs::remove(dir / "shard-00001-of-00003.h5");
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir); }),
                  "missing shard shard-00001-of-00003.h5");
}

TEST_F(NativeCheckpointTest, DirectoryWithInconsistentShardsIsRefused) {
  const fs::path dir = dir_ / "ckpt";
  const NativeCheckpoint checkpoint = sample_checkpoint();
  write_native_checkpoint_directory(dir, checkpoint, 3);

  // The last shard replaced by one that repeats the first tensor.
  NativeCheckpoint overlapping = checkpoint;
  overlapping.tensors.erase(std::next(overlapping.tensors.begin()), overlapping.tensors.end());
  write_native_checkpoint(dir / "shard-00002-of-00003.h5", overlapping);
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir); }),
                  "tensor 'gpt_neox.embed_in.weight' is in both shard-00000-of-00003.h5 and "
                  "shard-00002-of-00003.h5");

  NativeCheckpoint other_config = checkpoint;
  other_config.tensors.clear();
  other_config.config["hidden_size"] = 16;
  write_native_checkpoint(dir / "shard-00002-of-00003.h5", other_config);
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir); }), "different config");

  write_native_checkpoint(dir / "shard-00003-of-00004.h5", checkpoint);
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir); }), "unexpected shard file");
}

TEST_F(NativeCheckpointTest, TruncatedFileIsAClearError) {
  NativeCheckpoint checkpoint = sample_checkpoint();
  checkpoint.tensors["big"] = random_tensor(DType::F32, {256, 256}, 7);
  const fs::path file = dir_ / "ckpt.h5";
  write_native_checkpoint(file, checkpoint);
  fs::resize_file(file, fs::file_size(file) / 2);
  const std::string message = error_of([&] { read_native_checkpoint(file); });
  EXPECT_CONTAINS(message, file.string() + ": holds");
  EXPECT_CONTAINS(message, "the file is truncated");
}

TEST_F(NativeCheckpointTest, NonHdf5FileIsAClearError) {
  const fs::path file = dir_ / "model.safetensors";
  std::ofstream(file) << "definitely not HDF5";
  EXPECT_EQ(error_of([&] { read_native_checkpoint(file); }),
            file.string() +
                ": not a checkpoint file (neither a checksum header nor the HDF5 signature at its start)");
  EXPECT_FALSE(is_native_checkpoint(file));
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "absent.h5"); }),
                  "No such file or directory");
}

TEST_F(NativeCheckpointTest, WrongFormatAttributeIsRefused) {
  const fs::path file = dir_ / "ckpt.h5";
  RawFile(file).write_header("foo");
  EXPECT_EQ(error_of([&] { read_native_checkpoint(file); }),
            file.string() + ": attribute 'format' is 'foo', expected 'dijiang'");
}

TEST_F(NativeCheckpointTest, FileWithoutFormatAttributeIsRefused) {
  const fs::path file = dir_ / "plain.h5";
  RawFile{file};
  EXPECT_TRUE(is_native_checkpoint(file));  // by signature only
  EXPECT_EQ(error_of([&] { read_native_checkpoint(file); }),
            file.string() + ": missing attribute 'format'");
}

TEST_F(NativeCheckpointTest, NewerFormatVersionIsRefused) {
  const fs::path file = dir_ / "ckpt.h5";
  write_native_checkpoint(file, sample_checkpoint());
  {
    const hid_t raw = H5Fopen(file.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    const hid_t attribute = H5Aopen(raw, "format_version", H5P_DEFAULT);
    const int64_t version = 7;
    EXPECT_GE(H5Awrite(attribute, H5T_NATIVE_INT64, &version), 0);
    H5Aclose(attribute);
    H5Fclose(raw);
  }
  seal_checkpoint_file(file);  // so that the checksum does not stop the reader first
  EXPECT_EQ(error_of([&] { read_native_checkpoint(file); }),
            file.string() + ": format_version 7 is newer than this build reads (1)");
}

TEST_F(NativeCheckpointTest, RootMayHoldOnlyValidlyNamedTensorDatasets) {
  const float values[2] = {1, 2};
  {
    const fs::path file = dir_ / "group.h5";
    RawFile raw(file);
    raw.write_header("dijiang");
    H5Gclose(H5Gcreate2(raw.id(), "layers", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  }
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "group.h5"); }),
                  "'layers' is not a dataset");
  {
    RawFile raw(dir_ / "name.h5");
    raw.write_header("dijiang");
    H5Dclose(raw.dataset("bad name", H5T_IEEE_F32LE, 2, values));
  }
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "name.h5"); }),
                  "'bad name' is not a valid tensor name");
  {
    RawFile raw(dir_ / "link.h5");
    raw.write_header("dijiang");
    H5Dclose(raw.dataset("x", H5T_IEEE_F32LE, 2, values));
    H5Lcreate_soft("/x", raw.id(), "y", H5P_DEFAULT, H5P_DEFAULT);
  }
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "link.h5"); }), "'y' is a link");
}

TEST_F(NativeCheckpointTest, DatasetTypesAreValidated) {
  {
    RawFile raw(dir_ / "string.h5");
    raw.write_header("dijiang");
    const hid_t type = H5Tcopy(H5T_C_S1);
    H5Tset_size(type, 4);
    H5Dclose(raw.dataset("x", type, 1, "abcd"));
    H5Tclose(type);
  }
  EXPECT_EQ(error_of([&] { read_native_checkpoint(dir_ / "string.h5"); }),
            (dir_ / "string.h5").string() + ": dataset 'x' has an unsupported type");
  {
    RawFile raw(dir_ / "tag.h5");
    raw.write_header("dijiang");
    const float values[2] = {1, 2};
    const hid_t dataset = raw.dataset("x", H5T_IEEE_F32LE, 2, values);
    RawFile::string_attribute(dataset, "dtype", "BF16");
    H5Dclose(dataset);
  }
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "tag.h5"); }),
                  "dataset 'x' is stored as F32 with dtype 'BF16'");
  {
    RawFile raw(dir_ / "bool.h5");
    raw.write_header("dijiang");
    const uint8_t values[2] = {1, 2};
    const hid_t dataset = raw.dataset("x", H5T_STD_U8LE, 2, values);
    RawFile::string_attribute(dataset, "dtype", "BOOL");
    H5Dclose(dataset);
  }
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "bool.h5"); }),
                  "values other than 0 and 1");
}

TEST_F(NativeCheckpointTest, DatasetStorageIsValidated) {
  {
    RawFile raw(dir_ / "unwritten.h5");
    raw.write_header("dijiang");
    const hsize_t count = 4;
    const hid_t space = H5Screate_simple(1, &count, nullptr);
    H5Dclose(
        H5Dcreate2(raw.id(), "x", H5T_IEEE_F32LE, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    H5Sclose(space);
  }
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "unwritten.h5"); }),
                  "dataset 'x' has no data");
  {
    RawFile raw(dir_ / "external.h5");
    raw.write_header("dijiang");
    const hid_t creation = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_external(creation, (dir_ / "raw.bin").c_str(), 0, H5F_UNLIMITED);
    const hsize_t count = 4;
    const hid_t space = H5Screate_simple(1, &count, nullptr);
    H5Dclose(H5Dcreate2(raw.id(), "x", H5T_IEEE_F32LE, space, H5P_DEFAULT, creation, H5P_DEFAULT));
    H5Sclose(space);
    H5Pclose(creation);
  }
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(dir_ / "external.h5"); }),
                  "dataset 'x' keeps its data outside the file");

  // A corrupt header declaring a huge shape must not turn into a huge allocation. The dataspace
  // stores each dimension as a little-endian uint64; 4099 occurs nowhere else in this file.
  const fs::path file = dir_ / "corrupt.h5";
  NativeCheckpoint checkpoint = sample_checkpoint();
  checkpoint.tensors["x"] = Tensor(DType::F32, {4099});
  write_native_checkpoint(file, checkpoint);
  std::string bytes = file_bytes(file);
  const std::string dim("\x03\x10\0\0\0\0\0\0", 8), huge("\0\0\0\0\0\x01\0\0", 8);
  size_t patched = 0;
  for (size_t at = bytes.find(dim); at != std::string::npos;
       at = bytes.find(dim, at + 8), ++patched)
    bytes.replace(at, 8, huge);
  ASSERT_GT(patched, 0u);
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_CONTAINS(error_of([&] { read_native_checkpoint(file); }), file.string() + ": checksum mismatch");
  seal_checkpoint_file(file);
  EXPECT_EQ(error_of([&] { read_native_checkpoint(file); }),
            file.string() +
                ": dataset 'x' stores 16396 bytes where its shape and type need 4398046511104");
}

// Files from other writers (h5py with numpy '>i4', fixed-length byte-string attributes) load.
TEST_F(NativeCheckpointTest, ReadsBigEndianDataAndFixedLengthStrings) {
  const fs::path file = dir_ / "foreign.h5";
  {
    RawFile raw(file);
    const auto fixed = [&](const char* name, const std::string& value) {
      const hid_t type = H5Tcopy(H5T_C_S1);
      H5Tset_size(type, value.size());
      H5Tset_strpad(type, H5T_STR_NULLPAD);
      RawFile::attribute(raw.id(), name, type, value.data());
      H5Tclose(type);
    };
    fixed("format", "dijiang");
    const int32_t version = 1;
    RawFile::attribute(raw.id(), "format_version", H5T_NATIVE_INT32, &version);
    fixed("config", R"({"hidden_size":8})");
    fixed("metadata", "{}");
    const int32_t values[3] = {1, -2, 300000};
    H5Dclose(raw.dataset("x", H5T_STD_I32LE, 3, values));
    H5Dclose(raw.dataset("y", H5T_STD_I32BE, 3, values, H5T_NATIVE_INT32));
  }
  const NativeCheckpoint loaded = read_native_checkpoint(file);
  EXPECT_EQ(loaded.config, (nlohmann::json{{"hidden_size", 8}}));
  for (const char* name : {"x", "y"}) {
    const Tensor& tensor = loaded.tensors.at(name);
    ASSERT_EQ(tensor.dtype(), DType::I32);
    EXPECT_EQ(std::vector<int32_t>(tensor.data<int32_t>(), tensor.data<int32_t>() + 3),
              (std::vector<int32_t>{1, -2, 300000}));
  }
}

TEST_F(NativeCheckpointTest, InvalidTensorNameIsRefusedAndTargetKept) {
  const fs::path file = dir_ / "ckpt.h5";
  write_native_checkpoint(file, sample_checkpoint(1));
  const std::string before = file_bytes(file);
  for (const char* name : {"", "a/b", ".", "has space"}) {
    NativeCheckpoint bad = sample_checkpoint(2);
    bad.tensors[name] = Tensor(DType::F32, {2});
    EXPECT_EQ(error_of([&] { write_native_checkpoint(file, bad); }),
              fmt::format("{}: '{}' is not a valid tensor name", file.string(), name));
    EXPECT_CONTAINS(error_of([&] { write_native_checkpoint_directory(dir_ / "dir", bad, 2); }),
                    "is not a valid tensor name");
  }
  EXPECT_EQ(file_bytes(file), before);
  EXPECT_EQ(listing(dir_), std::set<std::string>{"ckpt.h5"});
}

TEST_F(NativeCheckpointTest, FailedRenameRemovesTheTemporaryFile) {
  // The file is written completely, then cannot be renamed onto a directory.
  const fs::path target = dir_ / "ckpt.h5";
  fs::create_directory(target);
  std::ofstream(target / "inside") << "keep me";
  EXPECT_CONTAINS(error_of([&] { write_native_checkpoint(target, sample_checkpoint()); }),
                  "cannot rename");
  EXPECT_EQ(listing(dir_), std::set<std::string>{"ckpt.h5"});
  EXPECT_EQ(file_bytes(target / "inside"), "keep me");
}

TEST_F(NativeCheckpointTest, UnwritableCheckpointsAreRefusedBeforeWriting) {
  const fs::path file = dir_ / "ckpt.h5";
  NativeCheckpoint no_config = sample_checkpoint();
  no_config.config = nullptr;
  EXPECT_EQ(error_of([&] { write_native_checkpoint(file, no_config); }),
            file.string() + ": config must be a JSON object");
  NativeCheckpoint not_bool = sample_checkpoint();
  Tensor flags(DType::BOOL, {2});
  flags.bytes()[1] = std::byte{2};
  not_bool.tensors["flags"] = flags;
  EXPECT_CONTAINS(error_of([&] { write_native_checkpoint(file, not_bool); }),
                  "BOOL tensor 'flags' holds values other than 0 and 1");
  EXPECT_CONTAINS(
      error_of([&] { write_native_checkpoint_directory(dir_ / "d", sample_checkpoint(), 0); }),
      "shard count 0");
  EXPECT_TRUE(listing(dir_).empty());
}

TEST_F(NativeCheckpointTest, RecognisesCheckpoints) {
  EXPECT_FALSE(is_native_checkpoint(dir_ / "absent"));
  EXPECT_FALSE(is_native_checkpoint(dir_));  // empty directory
  write_native_checkpoint_directory(dir_ / "ckpt", sample_checkpoint(), 2);
  EXPECT_TRUE(is_native_checkpoint(dir_ / "ckpt"));
  fs::remove(dir_ / "ckpt" / "COMPLETE");
  EXPECT_TRUE(is_native_checkpoint(dir_ / "ckpt"));  // shard files alone
}

}  // namespace
}  // namespace dj
