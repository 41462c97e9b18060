// The flat checkpoint format (layout in flat_checkpoint.h), through the HDF5 C API.
//
// As in native.cpp, HDF5's automatic error printing is silenced around every public call, each
// failed HDF5 call becomes a dj::Error naming the file (with HDF5's innermost reason), and every
// identifier is owned by a Handle so that error paths leak nothing (see hdf5_support.h). Values
// move in blocks of at most kBlockValues through hyperslab selections, so no single HDF5 call
// handles gigabytes and a read touches only the part of each file it needs.
#include "trainer/checkpoint/flat_checkpoint.h"

#include <fmt/format.h>
#include <hdf5.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <optional>
#include <string_view>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/checkpoint/hdf5_support.h"
#include "trainer/model/config.h"
#include "trainer/model/parameters.h"

namespace dj {
namespace {

namespace fs = std::filesystem;
using hdf5::FileErrors;
using hdf5::Handle;
using hdf5::QuietHdf5;

static_assert(std::endian::native == std::endian::little,
              "the flat format assumes a little-endian host");

constexpr std::string_view kFormatName = "dijiang-flat-shard";
constexpr std::string_view kCompleteMarker = "COMPLETE";
constexpr std::string_view kStagingSuffix = ".partial";
constexpr std::array<const char*, 3> kDatasets = {kFlatParameters, kFlatMomentM, kFlatMomentV};
constexpr hsize_t kBlockValues = hsize_t{1} << 26;  // 256 MiB of float32 per HDF5 call

// ---------------------------------------------------------------------------------------------
// HDF5 plumbing

// Selects values [offset, offset + count) of a 1-D dataset's file space.
Handle select_range(hid_t dataset, hsize_t offset, hsize_t count, const FileErrors& errors,
                    std::string_view what) {
  Handle space = errors.own(H5Dget_space(dataset), H5Sclose, what);
  errors.check(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, &offset, nullptr, &count, nullptr),
               what);
  return space;
}

// ---------------------------------------------------------------------------------------------
// Names

struct ShardName {
  int rank = 0;
  int world = 0;
};

bool looks_like_flat_shard(std::string_view name) {
  return name.starts_with("rank-") && name.ends_with(".h5");
}

std::optional<int> parse_count(std::string_view digits) {
  if (digits.empty() || digits.size() > 9) return std::nullopt;
  int value = 0;
  const auto [end, error] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (error != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return value;
}

// rank-<digits>-of-<digits>.h5; the digit count is not enforced here so that a misnamed copy of
// a rank file shows up as a duplicate rather than going unnoticed.
std::optional<ShardName> parse_shard_name(std::string_view name) {
  if (!looks_like_flat_shard(name)) return std::nullopt;
  name.remove_prefix(5);
  name.remove_suffix(3);
  const size_t of = name.find("-of-");
  if (of == std::string_view::npos) return std::nullopt;
  const std::optional<int> rank = parse_count(name.substr(0, of));
  const std::optional<int> world = parse_count(name.substr(of + 4));
  if (!rank || !world) return std::nullopt;
  return ShardName{*rank, *world};
}

void check_world(int world, const FileErrors& errors) {
  if (world < 1 || world > kMaxFlatRanks)
    errors.fail("rank count {} is not in 1..{}", world, kMaxFlatRanks);
}

// ---------------------------------------------------------------------------------------------
// Writing one rank file

// Writes `values` (count of them, may be null when count is 0) as a new 1-D float32 dataset.
void write_values(hid_t file, const char* name, const float* values, hsize_t count,
                  hid_t creation, const FileErrors& errors) {
  Handle space = errors.own(H5Screate_simple(1, &count, nullptr), H5Sclose,
                            "cannot create a dataspace");
  Handle dataset = errors.own(H5Dcreate2(file, name, H5T_IEEE_F32LE, space.get(), H5P_DEFAULT,
                                         creation, H5P_DEFAULT),
                              H5Dclose, fmt::format("cannot create dataset '{}'", name));
  const std::string what = fmt::format("cannot write dataset '{}'", name);
  for (hsize_t offset = 0; offset < count; offset += kBlockValues) {
    const hsize_t n = std::min(kBlockValues, count - offset);
    Handle file_space = select_range(dataset.get(), offset, n, errors, what);
    Handle memory_space = errors.own(H5Screate_simple(1, &n, nullptr), H5Sclose, what);
    errors.check(H5Dwrite(dataset.get(), H5T_IEEE_F32LE, memory_space.get(), file_space.get(),
                          H5P_DEFAULT, values + offset),
                 what);
  }
}

struct ShardText {
  std::string config, metadata;
};

void write_shard_file(const fs::path& path, const FlatShardHeader& header, const ShardText& text,
                      const std::array<const float*, 3>& values, const FileErrors& errors) {
  Handle file = hdf5::create_file(path, errors);
  hdf5::write_string_attribute(file.get(), "format", std::string(kFormatName), errors);
  hdf5::write_integer_attribute(file.get(), "format_version", kFlatFormatVersion, errors);
  hdf5::write_integer_attribute(file.get(), "rank", header.rank, errors);
  hdf5::write_integer_attribute(file.get(), "world", header.world, errors);
  hdf5::write_integer_attribute(file.get(), "begin", header.begin, errors);
  hdf5::write_integer_attribute(file.get(), "end", header.end, errors);
  hdf5::write_integer_attribute(file.get(), "total", header.total, errors);
  hdf5::write_string_attribute(file.get(), "config", text.config, errors);
  hdf5::write_string_attribute(file.get(), "metadata", text.metadata, errors);
  // Without modification times the same values always produce the same bytes.
  Handle creation = hdf5::untimed_dataset_creation(errors);
  const auto count = static_cast<hsize_t>(header.end - header.begin);
  for (size_t i = 0; i < kDatasets.size(); ++i)
    write_values(file.get(), kDatasets[i], values[i], count, creation.get(), errors);
  hdf5::close_and_seal(file, path, errors);
}

// ---------------------------------------------------------------------------------------------
// Reading and validating

struct Shard {
  fs::path file;
  int64_t begin = 0, end = 0, total = 0;
  nlohmann::json config, metadata;
};

Handle open_for_reading(const fs::path& path, const FileErrors& errors,
                        ChecksumCheck check = ChecksumCheck::bytes) {
  std::error_code error;
  if (!fs::is_regular_file(path, error)) errors.fail("not a regular file");
  return hdf5::open_verified_file(path, errors, check);
}

// Opens dataset `name` and checks that it is a 1-D float32 dataset of `expected` values whose
// data is all in this file.
Handle open_values(hid_t file, const char* name, int64_t expected, const FileErrors& errors) {
  const htri_t exists = H5Lexists(file, name, H5P_DEFAULT);
  errors.check(exists, fmt::format("cannot look up dataset '{}'", name));
  if (exists == 0) errors.fail("missing dataset '{}'", name);
  H5L_info_t link;
  errors.check(H5Lget_info(file, name, &link, H5P_DEFAULT),
               fmt::format("cannot inspect dataset '{}'", name));
  if (link.type != H5L_TYPE_HARD) errors.fail("'{}' is a link, not a dataset", name);
  Handle object = errors.own(H5Oopen(file, name, H5P_DEFAULT), H5Oclose,
                             fmt::format("cannot open dataset '{}'", name));
  if (H5Iget_type(object.get()) != H5I_DATASET) errors.fail("'{}' is not a dataset", name);
  Handle dataset = errors.own(H5Dopen2(file, name, H5P_DEFAULT), H5Dclose,
                              fmt::format("cannot open dataset '{}'", name));
  const std::string what = fmt::format("cannot inspect dataset '{}'", name);

  // float32 in either byte order (H5Dread converts).
  Handle type = errors.own(H5Dget_type(dataset.get()), H5Tclose, what);
  bool is_f32 = H5Tget_class(type.get()) == H5T_FLOAT;
  if (is_f32) {
    Handle little = errors.own(H5Tcopy(type.get()), H5Tclose, what);
    errors.check(H5Tset_order(little.get(), H5T_ORDER_LE), what);
    const htri_t equal = H5Tequal(little.get(), H5T_IEEE_F32LE);
    errors.check(equal, what);
    is_f32 = equal > 0;
  }
  if (!is_f32) errors.fail("dataset '{}' is not float32", name);

  Handle space = errors.own(H5Dget_space(dataset.get()), H5Sclose, what);
  if (H5Sget_simple_extent_type(space.get()) != H5S_SIMPLE ||
      H5Sget_simple_extent_ndims(space.get()) != 1)
    errors.fail("dataset '{}' is not one-dimensional", name);
  hsize_t length = 0;
  errors.check(H5Sget_simple_extent_dims(space.get(), &length, nullptr), what);
  if (length != static_cast<hsize_t>(expected))
    errors.fail("dataset '{}' holds {} values; the rank's range needs {}", name, length, expected);

  const H5D_layout_t layout = hdf5::layout_within_file(dataset.get(), name, errors);
  if (expected == 0) return dataset;
  const uint64_t nbytes = static_cast<uint64_t>(expected) * sizeof(float);
  const hsize_t stored = H5Dget_storage_size(dataset.get());
  if (stored == 0) errors.fail("dataset '{}' has no data", name);
  if (layout == H5D_CHUNKED) return dataset;  // chunks may be compressed: any size is plausible
  if (stored != nbytes)
    errors.fail("dataset '{}' stores {} bytes where {} values need {}", name, stored, expected,
                nbytes);
  if (layout == H5D_CONTIGUOUS &&
      !hdf5::contiguous_data_in_file(file, dataset.get(), nbytes, errors))
    errors.fail("dataset '{}' extends past the end of the file (truncated?)", name);
  return dataset;
}

// Reads and checks one rank file's attributes and datasets.
Shard inspect_shard(const fs::path& path, int rank, int world, ChecksumCheck check) {
  const FileErrors errors(path);
  Handle file = open_for_reading(path, errors, check);
  const std::string format = hdf5::read_string_attribute(file.get(), "format", errors);
  if (format != kFormatName)
    errors.fail("attribute 'format' is '{}', expected '{}'", format, kFormatName);
  hdf5::check_format_version(hdf5::read_integer_attribute(file.get(), "format_version", errors),
                             kFlatFormatVersion, errors);
  const int64_t stored_rank = hdf5::read_integer_attribute(file.get(), "rank", errors);
  const int64_t stored_world = hdf5::read_integer_attribute(file.get(), "world", errors);
  if (stored_rank != rank || stored_world != world)
    errors.fail("holds rank {} of {}, but its name says rank {} of {}", stored_rank, stored_world,
                rank, world);
  Shard shard;
  shard.file = path;
  shard.begin = hdf5::read_integer_attribute(file.get(), "begin", errors);
  shard.end = hdf5::read_integer_attribute(file.get(), "end", errors);
  shard.total = hdf5::read_integer_attribute(file.get(), "total", errors);
  if (shard.begin < 0 || shard.begin > shard.end || shard.end > shard.total)
    errors.fail("range [{}, {}) is not within [0, {})", shard.begin, shard.end, shard.total);
  shard.config = hdf5::parse_json_object(hdf5::read_string_attribute(file.get(), "config", errors),
                                         "attribute 'config'", errors);
  shard.metadata = hdf5::parse_json_object(
      hdf5::read_string_attribute(file.get(), "metadata", errors), "attribute 'metadata'", errors);
  for (const char* name : kDatasets) open_values(file.get(), name, shard.end - shard.begin, errors);
  return shard;
}

// The rank files of a `world`-rank checkpoint in `dir`, indexed by rank: all present, no others.
std::vector<fs::path> list_shards(const fs::path& dir, int world) {
  const FileErrors errors(dir);
  std::vector<fs::path> files(static_cast<size_t>(world));
  std::error_code error;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    const std::string name = it->path().filename().string();
    if (!looks_like_flat_shard(name)) continue;
    const std::optional<ShardName> parsed = parse_shard_name(name);
    if (!parsed) errors.fail("unexpected file {} (rank files are named rank-RRRRR-of-NNNNN.h5)", name);
    if (parsed->world != world || parsed->rank >= world)
      errors.fail("unexpected rank file {} in a checkpoint of {} ranks", name, world);
    fs::path& slot = files[static_cast<size_t>(parsed->rank)];
    if (!slot.empty())
      errors.fail("duplicate rank files for rank {}: {} and {}", parsed->rank,
                  slot.filename().string(), name);
    slot = it->path();
  }
  if (error) errors.fail("cannot list the directory: {}", error.message());
  for (int rank = 0; rank < world; ++rank)
    if (files[static_cast<size_t>(rank)].empty())
      errors.fail("missing rank file {} (the checkpoint has {} ranks)", flat_shard_name(rank, world),
                  world);
  return files;
}

// All rank files of `dir`, checked one by one and against each other. `check` says how much of
// each file's checksum to verify: all its bytes when reading a checkpoint, only the header when
// assembling one just written (the writers hashed the bytes as they sealed the files).
std::vector<Shard> inspect_shards(const fs::path& dir, int world, ChecksumCheck check) {
  const std::vector<fs::path> files = list_shards(dir, world);
  std::vector<Shard> shards;
  for (int rank = 0; rank < world; ++rank)
    shards.push_back(inspect_shard(files[static_cast<size_t>(rank)], rank, world, check));
  const Shard& first = shards.front();
  const std::string first_name = first.file.filename().string();
  for (size_t rank = 0; rank < shards.size(); ++rank) {
    const Shard& shard = shards[rank];
    const FileErrors errors(shard.file);
    if (shard.total != first.total)
      errors.fail("total is {}, but {} says {}", shard.total, first_name, first.total);
    if (shard.config != first.config) errors.fail("config differs from {}'s", first_name);
    if (shard.metadata != first.metadata) errors.fail("metadata differs from {}'s", first_name);
    if (rank == 0) {
      if (shard.begin != 0) errors.fail("rank 0 begins at {}, not 0", shard.begin);
      continue;
    }
    const Shard& previous = shards[rank - 1];
    if (shard.begin != previous.end)
      errors.fail("{}: begins at {} but {} ends at {}", shard.begin > previous.end ? "gap" : "overlap",
                  shard.begin, previous.file.filename().string(), previous.end);
  }
  const Shard& last = shards.back();
  if (last.end != last.total)
    FileErrors(last.file).fail("gap: the last rank ends at {} but the total is {}", last.end,
                               last.total);
  return shards;
}

void write_complete_marker(const fs::path& path, int world, int64_t total,
                           const FileErrors& errors) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << nlohmann::json{{"format", kFormatName},
                        {"format_version", kFlatFormatVersion},
                        {"world", world},
                        {"total", total}}
             .dump()
      << '\n';
  out.close();
  if (!out) errors.fail("cannot write {}", path.string());
}

struct Marker {
  int world = 0;
  int64_t total = 0;
};

Marker read_complete_marker(const fs::path& path) {
  const FileErrors errors(path);
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in && !in.eof()) errors.fail("cannot read the marker");
  const nlohmann::json marker = hdf5::parse_json_object(text, "the marker", errors);
  if (marker.value("format", "") != kFormatName)
    errors.fail("not a flat checkpoint marker (no \"format\": \"{}\")", kFormatName);
  const auto integer = [&](const char* key) -> int64_t {
    const auto it = marker.find(key);
    if (it == marker.end() || !it->is_number_integer()) errors.fail("no integer '{}'", key);
    return it->get<int64_t>();
  };
  hdf5::check_format_version(integer("format_version"), kFlatFormatVersion, errors);
  const int64_t world = integer("world");
  if (world < 1 || world > kMaxFlatRanks)
    errors.fail("names {} ranks, not 1..{}", world, kMaxFlatRanks);
  const int64_t total = integer("total");
  if (total < 0) errors.fail("total {} is negative", total);
  return {static_cast<int>(world), total};
}

// The staging directory's name is checked before anything under it is removed.
void check_staging_name(const fs::path& staging_dir) {
  const std::string name = staging_dir.filename().string();
  if (!(name.size() > 1 + kStagingSuffix.size() && name.starts_with('.') &&
        name.ends_with(kStagingSuffix)))
    fail("{}: not a staging directory name (.<name>{}); refusing to remove it",
         staging_dir.string(), kStagingSuffix);
}

// A second name for `from` at `to` (no data copied), or a copy where the file system has no
// hard links.
void link_or_copy(const fs::path& from, const fs::path& to, const FileErrors& errors) {
  std::error_code error;
  fs::create_hard_link(from, to, error);
  if (!error) return;
  spdlog::debug("cannot hard-link {} ({}); copying it", from.string(), error.message());
  std::error_code copy_error;
  fs::copy_file(from, to, copy_error);
  if (copy_error)
    errors.fail("cannot link or copy {} into place: {}", from.string(), copy_error.message());
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Names and staging

std::string flat_shard_name(int rank, int world) {
  return fmt::format("rank-{:05d}-of-{:05d}.h5", rank, world);
}

fs::path flat_staging_dir(const fs::path& final_dir) {
  const fs::path dir = without_trailing_separator(final_dir);
  return dir.parent_path() / fmt::format(".{}{}", dir.filename().string(), kStagingSuffix);
}

void reset_flat_staging_dir(const fs::path& staging_dir) {
  const fs::path dir = without_trailing_separator(staging_dir);
  clear_flat_staging_dir(dir);
  std::error_code error;
  if (!fs::is_directory(parent_of(dir), error))
    fail("{}: parent directory {} does not exist", dir.string(), parent_of(dir).string());
  if (!fs::create_directory(dir, error))
    fail("{}: cannot create the staging directory: {}", dir.string(),
         error ? error.message() : "it already exists");
}

void clear_flat_staging_dir(const fs::path& staging_dir) {
  const fs::path dir = without_trailing_separator(staging_dir);
  check_staging_name(dir);
  std::error_code error;
  fs::remove_all(dir, error);
  if (error) fail("{}: cannot remove the staging directory: {}", dir.string(), error.message());
}

// ---------------------------------------------------------------------------------------------
// Writing

void write_flat_shard(const fs::path& staging_dir, const FlatShardHeader& header,
                      const float* params, const float* m, const float* v) {
  const FileErrors dir_errors(staging_dir);
  check_world(header.world, dir_errors);
  if (header.rank < 0 || header.rank >= header.world)
    dir_errors.fail("rank {} is not in 0..{}", header.rank, header.world - 1);
  const fs::path file = staging_dir / flat_shard_name(header.rank, header.world);
  const FileErrors errors(file);
  if (header.begin < 0 || header.begin > header.end || header.end > header.total)
    errors.fail("range [{}, {}) is not within [0, {})", header.begin, header.end, header.total);
  if (header.end > header.begin && (params == nullptr || m == nullptr || v == nullptr))
    errors.fail("no values to write for the range [{}, {})", header.begin, header.end);
  const ShardText text{hdf5::dump_json_object(header.config, "config", errors),
                       hdf5::dump_json_object(header.metadata, "metadata", errors)};
  std::error_code error;
  if (!fs::is_directory(staging_dir, error))
    dir_errors.fail("the staging directory does not exist");

  const QuietHdf5 quiet;
  write_file_atomically(file, [&](const fs::path& temp) {
    write_shard_file(temp, header, text, {params, m, v}, errors);
  });
}

void finish_flat_checkpoint(const fs::path& staging_path, const fs::path& final_path, int world) {
  const fs::path staging = without_trailing_separator(staging_path);
  const fs::path final_dir = without_trailing_separator(final_path);
  const FileErrors errors(staging);
  check_world(world, errors);
  if (staging.lexically_normal() == final_dir.lexically_normal())
    errors.fail("the staging and final directories must differ");
  std::error_code error;
  if (!fs::is_directory(staging, error)) errors.fail("the staging directory does not exist");

  const QuietHdf5 quiet;
  const std::vector<Shard> shards = inspect_shards(staging, world, ChecksumCheck::header);
  const int64_t total = shards.front().total;
  // Replaces only an earlier flat checkpoint. The rank files are linked, not copied, into the
  // directory that goes into place; COMPLETE comes last.
  write_directory_atomically(final_dir, is_flat_checkpoint, [&](const fs::path& temp) {
    for (const Shard& shard : shards) link_or_copy(shard.file, temp / shard.file.filename(), errors);
    write_complete_marker(temp / kCompleteMarker, world, total, FileErrors(final_dir));
  });
  // The checkpoint is in place: a staging directory that cannot be removed only costs disk space
  // until the next save clears it.
  fs::remove_all(staging, error);
  if (error)
    spdlog::warn("{}: cannot remove the staging directory: {}", staging.string(), error.message());
}

// ---------------------------------------------------------------------------------------------
// Reading

struct FlatCheckpointReader::State {
  fs::path dir;
  nlohmann::json config, metadata;
  int64_t total = 0;
  std::vector<fs::path> files;
  std::vector<int64_t> begins, ends;
};

FlatCheckpointReader::FlatCheckpointReader(const fs::path& dir_path) {
  const fs::path dir = without_trailing_separator(dir_path);
  const FileErrors errors(dir);
  std::error_code error;
  const fs::file_status status = fs::status(dir, error);
  if (!fs::exists(status)) errors.fail("no such file or directory");
  if (!fs::is_directory(status)) errors.fail("not a directory (a flat checkpoint is one)");
  if (!fs::is_regular_file(dir / kCompleteMarker, error))
    errors.fail("no {} marker: the flat checkpoint is incomplete (an interrupted save?)",
                kCompleteMarker);

  const QuietHdf5 quiet;
  const Marker marker = read_complete_marker(dir / kCompleteMarker);
  const std::vector<Shard> shards = inspect_shards(dir, marker.world, ChecksumCheck::bytes);
  if (shards.front().total != marker.total)
    errors.fail("{} says {} values but the rank files hold {}", kCompleteMarker, marker.total,
                shards.front().total);
  state_ = std::make_unique<State>();
  state_->dir = dir;
  state_->config = shards.front().config;
  state_->metadata = shards.front().metadata;
  state_->total = marker.total;
  for (const Shard& shard : shards) {
    state_->files.push_back(shard.file);
    state_->begins.push_back(shard.begin);
    state_->ends.push_back(shard.end);
  }
}

FlatCheckpointReader::~FlatCheckpointReader() = default;
FlatCheckpointReader::FlatCheckpointReader(FlatCheckpointReader&&) noexcept = default;
FlatCheckpointReader& FlatCheckpointReader::operator=(FlatCheckpointReader&&) noexcept = default;

const fs::path& FlatCheckpointReader::path() const { return state_->dir; }
const nlohmann::json& FlatCheckpointReader::config() const { return state_->config; }
const nlohmann::json& FlatCheckpointReader::metadata() const { return state_->metadata; }
int64_t FlatCheckpointReader::total() const { return state_->total; }
int FlatCheckpointReader::world() const { return static_cast<int>(state_->files.size()); }

std::pair<int64_t, int64_t> FlatCheckpointReader::shard_range(int rank) const {
  if (rank < 0 || rank >= world())
    fail("{}: no rank {} in a checkpoint of {} ranks", state_->dir.string(), rank, world());
  const auto index = static_cast<size_t>(rank);
  return {state_->begins[index], state_->ends[index]};
}

void FlatCheckpointReader::read(const std::string& dataset, int64_t begin, int64_t end,
                                float* out) const {
  const FileErrors dir_errors(state_->dir);
  if (std::find_if(kDatasets.begin(), kDatasets.end(),
                   [&](const char* name) { return dataset == name; }) == kDatasets.end())
    dir_errors.fail("no dataset '{}' (a flat checkpoint holds {}, {} and {})", dataset,
                    kFlatParameters, kFlatMomentM, kFlatMomentV);
  if (begin < 0 || begin > end || end > state_->total)
    dir_errors.fail("cannot read [{}, {}) of {}: not within [0, {})", begin, end, dataset,
                    state_->total);
  if (begin == end) return;

  const QuietHdf5 quiet;
  // The first rank whose slice ends after `begin`; empty slices are skipped on the way.
  const auto first = std::upper_bound(state_->ends.begin(), state_->ends.end(), begin);
  for (auto rank = static_cast<size_t>(first - state_->ends.begin());
       rank < state_->files.size() && state_->begins[rank] < end; ++rank) {
    const int64_t from = std::max(begin, state_->begins[rank]);
    const int64_t to = std::min(end, state_->ends[rank]);
    if (from >= to) continue;
    const FileErrors errors(state_->files[rank]);
    Handle file = open_for_reading(state_->files[rank], errors);
    // Checked again: the file may have changed since the checkpoint was opened.
    Handle values = open_values(file.get(), dataset.c_str(),
                                state_->ends[rank] - state_->begins[rank], errors);
    const std::string what = fmt::format("cannot read dataset '{}'", dataset);
    const auto local = static_cast<hsize_t>(from - state_->begins[rank]);
    const auto count = static_cast<hsize_t>(to - from);
    for (hsize_t offset = 0; offset < count; offset += kBlockValues) {
      const hsize_t n = std::min(kBlockValues, count - offset);
      Handle file_space = select_range(values.get(), local + offset, n, errors, what);
      Handle memory_space = errors.own(H5Screate_simple(1, &n, nullptr), H5Sclose, what);
      errors.check(H5Dread(values.get(), H5T_NATIVE_FLOAT, memory_space.get(), file_space.get(),
                           H5P_DEFAULT, out + (from - begin) + static_cast<int64_t>(offset)),
                   what);
    }
  }
}

std::vector<fs::path> flat_checkpoint_files(const fs::path& dir_path) {
  const fs::path dir = without_trailing_separator(dir_path);
  const FileErrors errors(dir);
  std::error_code error;
  if (!fs::is_directory(dir, error)) errors.fail("not a directory (a flat checkpoint is one)");
  if (!fs::is_regular_file(dir / kCompleteMarker, error))
    errors.fail("no {} marker: the flat checkpoint is incomplete (an interrupted save?)",
                kCompleteMarker);
  return list_shards(dir, read_complete_marker(dir / kCompleteMarker).world);
}

bool is_flat_checkpoint(const fs::path& path) {
  std::error_code error;
  if (!fs::is_directory(path, error)) return false;
  for (fs::directory_iterator it(path, error), end; !error && it != end; it.increment(error))
    if (parse_shard_name(it->path().filename().string())) return true;
  return false;
}

}  // namespace dj
