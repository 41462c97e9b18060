// The native checkpoint format (layout in native.h), through the HDF5 C API.
//
// HDF5's automatic error printing is silenced for the duration of every public call; each failed
// HDF5 call becomes a dj::Error naming the file, with HDF5's own innermost reason appended. Every
// identifier is owned by a Handle, so error paths leak nothing (see hdf5_support.h). Writes go
// through atomic_write.h, so a failed write leaves no partial checkpoint behind.
#include "trainer/checkpoint/native.h"

#include <fmt/format.h>
#include <hdf5.h>

#include <algorithm>
#include <bit>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <new>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "trainer/checkpoint/atomic_write.h"
#include "trainer/checkpoint/hdf5_support.h"

namespace dj {
namespace {

namespace fs = std::filesystem;
using PlannedEntry = TensorPlan::value_type;
using hdf5::FileErrors;
using hdf5::Handle;
using hdf5::QuietHdf5;

// Tensors are read and written with the little-endian file types as memory types, so host bytes
// go to disk unchanged.
static_assert(std::endian::native == std::endian::little,
              "the native format assumes a little-endian host");

constexpr std::string_view kFormatName = "dijiang";
constexpr std::string_view kCompleteMarker = "COMPLETE";
constexpr int kMaxShards = 99999;  // shard file names have five digits

// ---------------------------------------------------------------------------------------------
// Names, types and shapes

// Tensor names are Hugging Face style dotted names. '/' would make an HDF5 path and "." / ".."
// path components; spaces, control and non-ASCII characters never occur in real names, so a file
// holding them is foreign or corrupt.
bool is_valid_tensor_name(std::string_view name) {
  if (name.empty() || name == "." || name == "..") return false;
  return std::all_of(name.begin(), name.end(),
                     [](char c) { return c > ' ' && c < '\x7f' && c != '/'; });
}

bool holds_only_booleans(const Tensor& tensor) {
  const auto* values = reinterpret_cast<const uint8_t*>(tensor.bytes());
  return std::all_of(values, values + tensor.numel(), [](uint8_t value) { return value <= 1; });
}

// BF16 and BOOL have no HDF5 type of their own: they are stored as U16 and U8 and tagged with a
// `dtype` attribute. F16 starts from F32; see file_type().
hid_t predefined_type(DType dtype) {
  switch (dtype) {
    case DType::F64: return H5T_IEEE_F64LE;
    case DType::F32:
    case DType::F16: return H5T_IEEE_F32LE;
    case DType::I64: return H5T_STD_I64LE;
    case DType::I32: return H5T_STD_I32LE;
    case DType::I16: return H5T_STD_I16LE;
    case DType::I8: return H5T_STD_I8LE;
    case DType::U64: return H5T_STD_U64LE;
    case DType::U32: return H5T_STD_U32LE;
    case DType::BF16:
    case DType::U16: return H5T_STD_U16LE;
    case DType::BOOL:
    case DType::U8: return H5T_STD_U8LE;
  }
  return H5I_INVALID_HID;
}

// The type a tensor of `dtype` has in the file (and in memory: the host is little-endian).
Handle file_type(DType dtype, const FileErrors& errors) {
  Handle type = errors.own(H5Tcopy(predefined_type(dtype)), H5Tclose, "cannot copy a datatype");
  if (dtype == DType::F16) {
    // HDF5 1.10 predefines no half type. This is IEEE binary16 (sign bit 15, exponent bits 10-14
    // with bias 15, mantissa bits 0-9), built the way h5py builds the type it maps numpy.float16
    // to, so h5py reads these datasets as float16. The fields must shrink before the size does.
    errors.check(H5Tset_fields(type.get(), 15, 10, 5, 0, 10), "cannot build the float16 type");
    errors.check(H5Tset_size(type.get(), 2), "cannot build the float16 type");
    errors.check(H5Tset_ebias(type.get(), 15), "cannot build the float16 type");
  }
  return type;
}

bool has_dtype_tag(DType dtype) { return dtype == DType::BF16 || dtype == DType::BOOL; }

// The dtypes a dataset's HDF5 type alone can denote (BF16 and BOOL need the `dtype` tag).
constexpr DType kUntaggedDTypes[] = {DType::F64, DType::F32, DType::F16, DType::I64,
                                     DType::I32, DType::I16, DType::I8,  DType::U64,
                                     DType::U32, DType::U16, DType::U8};

// Which untagged dtype a file type is. Byte order is ignored because H5Dread converts it, so a
// big-endian dataset written elsewhere (h5py with '>f4') still loads.
std::optional<DType> untagged_dtype(hid_t type, const FileErrors& errors) {
  const H5T_class_t type_class = H5Tget_class(type);
  if (type_class != H5T_INTEGER && type_class != H5T_FLOAT) return std::nullopt;
  Handle little = errors.own(H5Tcopy(type), H5Tclose, "cannot copy a datatype");
  errors.check(H5Tset_order(little.get(), H5T_ORDER_LE), "cannot inspect a datatype");
  for (DType dtype : kUntaggedDTypes) {
    const htri_t equal = H5Tequal(little.get(), file_type(dtype, errors).get());
    errors.check(equal, "cannot compare datatypes");
    if (equal > 0) return dtype;
  }
  return std::nullopt;
}

Handle make_dataspace(const Shape& shape, const FileErrors& errors) {
  if (shape.empty())
    return errors.own(H5Screate(H5S_SCALAR), H5Sclose, "cannot create a dataspace");
  const std::vector<hsize_t> dims(shape.begin(), shape.end());
  return errors.own(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr), H5Sclose,
                    fmt::format("cannot create a dataspace of shape {}", shape_string(shape)));
}

// ---------------------------------------------------------------------------------------------
// One file

// The JSON attributes as stored, made before anything touches the disk so that a checkpoint
// that cannot be written fails without I/O.
struct StoredText {
  std::string config;
  std::string metadata;
};

StoredText validate_for_writing(const nlohmann::json& config, const nlohmann::json& metadata,
                                const TensorPlan& tensors, const FileErrors& errors) {
  for (const auto& [name, tensor] : tensors)
    if (!is_valid_tensor_name(name)) errors.fail("'{}' is not a valid tensor name", name);
  return {hdf5::dump_json_object(config, "config", errors),
          hdf5::dump_json_object(metadata, "metadata", errors)};
}

// Makes the planned tensor and writes it as a dataset; the tensor is released on return.
void write_dataset(hid_t file, const PlannedEntry& entry, hid_t creation, const FileErrors& errors,
                   const std::string& writer) {
  const std::string& name = entry.first;
  const Tensor tensor = make_planned(name, entry.second, writer);
  if (tensor.dtype() == DType::BOOL && !holds_only_booleans(tensor))
    errors.fail("BOOL tensor '{}' holds values other than 0 and 1", name);
  Handle type = file_type(tensor.dtype(), errors);
  Handle space = make_dataspace(tensor.shape(), errors);
  Handle dataset = errors.own(
      H5Dcreate2(file, name.c_str(), type.get(), space.get(), H5P_DEFAULT, creation, H5P_DEFAULT),
      H5Dclose, fmt::format("cannot create dataset '{}'", name));
  errors.check(H5Dwrite(dataset.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, tensor.bytes()),
               fmt::format("cannot write dataset '{}'", name));
  if (has_dtype_tag(tensor.dtype()))
    hdf5::write_string_attribute(dataset.get(), "dtype", std::string(dtype_name(tensor.dtype())),
                                 errors);
}

// Creates `path` (which must not exist) holding `tensors` in the layout of native.h, making one
// tensor at a time.
void write_file(const fs::path& path, const StoredText& text, std::span<const PlannedEntry* const> tensors,
                const FileErrors& errors, const std::string& writer) {
  Handle file = hdf5::create_file(path, errors);
  hdf5::write_string_attribute(file.get(), "format", std::string(kFormatName), errors);
  hdf5::write_integer_attribute(file.get(), "format_version", kNativeFormatVersion, errors);
  hdf5::write_string_attribute(file.get(), "config", text.config, errors);
  hdf5::write_string_attribute(file.get(), "metadata", text.metadata, errors);
  // Without modification times the same checkpoint always produces the same bytes.
  Handle creation = hdf5::untimed_dataset_creation(errors);
  for (const PlannedEntry* entry : tensors) write_dataset(file.get(), *entry, creation.get(), errors, writer);
  hdf5::close_and_seal(file, path, errors);
}

// The names of the links at the root, in name order.
std::vector<std::string> root_link_names(hid_t file, const FileErrors& errors) {
  H5G_info_t info;
  errors.check(H5Gget_info(file, &info), "cannot list the root group");
  std::vector<std::string> names;
  for (hsize_t i = 0; i < info.nlinks; ++i) {
    const ssize_t length =
        H5Lget_name_by_idx(file, ".", H5_INDEX_NAME, H5_ITER_INC, i, nullptr, 0, H5P_DEFAULT);
    if (length < 0) errors.fail_hdf5("cannot list the root group");
    std::string name(static_cast<size_t>(length) + 1, '\0');
    if (H5Lget_name_by_idx(file, ".", H5_INDEX_NAME, H5_ITER_INC, i, name.data(), name.size(),
                           H5P_DEFAULT) < 0)
      errors.fail_hdf5("cannot list the root group");
    name.resize(static_cast<size_t>(length));
    names.push_back(std::move(name));
  }
  return names;
}

DType dataset_dtype(hid_t dataset, const std::string& name, const FileErrors& errors) {
  Handle type = errors.own(H5Dget_type(dataset), H5Tclose,
                           fmt::format("cannot read the type of dataset '{}'", name));
  const std::optional<DType> stored = untagged_dtype(type.get(), errors);
  if (!stored) errors.fail("dataset '{}' has an unsupported type", name);
  const htri_t tagged = H5Aexists(dataset, "dtype");
  errors.check(tagged, fmt::format("cannot look up the attributes of dataset '{}'", name));
  if (tagged == 0) return *stored;
  const std::string tag = hdf5::read_string_attribute(
      dataset, "dtype", fmt::format("attribute 'dtype' of dataset '{}'", name), errors);
  if (tag == "BF16" && *stored == DType::U16) return DType::BF16;
  if (tag == "BOOL" && *stored == DType::U8) return DType::BOOL;
  errors.fail(
      "dataset '{}' is stored as {} with dtype '{}'; only U16 may be tagged BF16 and U8 BOOL", name,
      dtype_name(*stored), tag);
}

Shape dataset_shape(hid_t dataset, const std::string& name, DType dtype, const FileErrors& errors) {
  Handle space = errors.own(H5Dget_space(dataset), H5Sclose,
                            fmt::format("cannot read the shape of dataset '{}'", name));
  const H5S_class_t space_class = H5Sget_simple_extent_type(space.get());
  if (space_class == H5S_SCALAR) return {};
  if (space_class != H5S_SIMPLE) errors.fail("dataset '{}' has no shape (null dataspace)", name);
  const int rank = H5Sget_simple_extent_ndims(space.get());
  errors.check(rank, fmt::format("cannot read the shape of dataset '{}'", name));
  std::vector<hsize_t> dims(static_cast<size_t>(rank));
  errors.check(H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr),
               fmt::format("cannot read the shape of dataset '{}'", name));
  // The byte count must fit in int64: anything larger is a corrupt file, not a size to allocate.
  const uint64_t limit =
      static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dtype_size(dtype);
  uint64_t numel = 1;
  Shape shape;
  for (hsize_t dim : dims) {
    if (dim > (numel == 0 ? limit : limit / numel)) errors.fail("dataset '{}' is too large", name);
    numel *= dim;
    shape.push_back(static_cast<int64_t>(dim));
  }
  return shape;
}

// Checks, before anything is allocated, that the dataset's data is in this file: a corrupt header
// can declare any shape, and storage never written would read back as fill values.
void check_dataset_storage(hid_t file, hid_t dataset, const std::string& name, uint64_t nbytes,
                           const FileErrors& errors) {
  const H5D_layout_t layout = hdf5::layout_within_file(dataset, name, errors);
  if (nbytes == 0) return;
  const hsize_t stored = H5Dget_storage_size(dataset);
  if (stored == 0) errors.fail("dataset '{}' has no data", name);
  if (layout == H5D_CHUNKED) return;  // chunks may be compressed: any size is plausible
  if (stored != nbytes)
    errors.fail("dataset '{}' stores {} bytes where its shape and type need {}", name, stored,
                nbytes);
  if (layout == H5D_CONTIGUOUS && !hdf5::contiguous_data_in_file(file, dataset, nbytes, errors))
    errors.fail("dataset '{}' extends past the end of the file", name);
}

// An open checkpoint file, shared by the readers of its datasets.
struct OpenFile {
  Handle file;
  FileErrors errors;
};

// Reads rows [first, first + count) of dataset `name` (its dtype and shape checked on opening).
void read_dataset_rows(const OpenFile& open, const std::string& name, DType dtype, const Shape& shape,
                       int64_t first, int64_t count, std::byte* out) {
  const QuietHdf5 quiet;
  const FileErrors& errors = open.errors;
  Handle dataset = errors.own(H5Dopen2(open.file.get(), name.c_str(), H5P_DEFAULT), H5Dclose,
                              fmt::format("cannot open dataset '{}'", name));
  Handle memory = file_type(dtype, errors);
  const std::string what = fmt::format("cannot read dataset '{}'", name);
  if (shape.empty() || (first == 0 && count == shape[0])) {
    errors.check(H5Dread(dataset.get(), memory.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out), what);
  } else {
    Handle file_space = errors.own(H5Dget_space(dataset.get()), H5Sclose, what);
    std::vector<hsize_t> start(shape.size(), 0), extent(shape.begin(), shape.end());
    start[0] = static_cast<hsize_t>(first);
    extent[0] = static_cast<hsize_t>(count);
    errors.check(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start.data(), nullptr, extent.data(), nullptr),
                 what);
    Handle memory_space = errors.own(H5Screate_simple(static_cast<int>(extent.size()), extent.data(), nullptr),
                                     H5Sclose, what);
    errors.check(H5Dread(dataset.get(), memory.get(), memory_space.get(), file_space.get(), H5P_DEFAULT, out), what);
  }
  if (dtype == DType::BOOL) {
    const int64_t row_numel = shape.empty() ? 1 : shape_numel(Shape(shape.begin() + 1, shape.end()));
    const auto* values = reinterpret_cast<const uint8_t*>(out);
    if (!std::all_of(values, values + count * row_numel, [](uint8_t value) { return value <= 1; }))
      errors.fail("dataset '{}' is tagged BOOL but holds values other than 0 and 1", name);
  }
}

StoredNativeCheckpoint open_file(const fs::path& path) {
  const FileErrors path_errors(path);
  Handle handle = hdf5::open_verified_file(path, path_errors);
  const auto open = std::make_shared<const OpenFile>(OpenFile{std::move(handle), path_errors});
  const FileErrors& errors = open->errors;
  const hid_t file = open->file.get();

  const std::string format = hdf5::read_string_attribute(file, "format", errors);
  if (format != kFormatName)
    errors.fail("attribute 'format' is '{}', expected '{}'", format, kFormatName);
  hdf5::check_format_version(hdf5::read_integer_attribute(file, "format_version", errors),
                             kNativeFormatVersion, errors);

  StoredNativeCheckpoint checkpoint;
  checkpoint.config = hdf5::parse_json_object(
      hdf5::read_string_attribute(file, "config", errors), "attribute 'config'", errors);
  checkpoint.metadata = hdf5::parse_json_object(
      hdf5::read_string_attribute(file, "metadata", errors), "attribute 'metadata'", errors);

  for (const std::string& name : root_link_names(file, errors)) {
    if (!is_valid_tensor_name(name)) errors.fail("'{}' is not a valid tensor name", name);
    H5L_info_t link;
    errors.check(H5Lget_info(file, name.c_str(), &link, H5P_DEFAULT),
                 fmt::format("cannot inspect '{}'", name));
    // Soft and external links could point anywhere, including other files.
    if (link.type != H5L_TYPE_HARD)
      errors.fail("'{}' is a link; only datasets may be at the root", name);
    Handle object = errors.own(H5Oopen(file, name.c_str(), H5P_DEFAULT), H5Oclose,
                               fmt::format("cannot open '{}'", name));
    if (H5Iget_type(object.get()) != H5I_DATASET)
      errors.fail("'{}' is not a dataset; only datasets may be at the root", name);
    const DType dtype = dataset_dtype(object.get(), name, errors);
    Shape shape = dataset_shape(object.get(), name, dtype, errors);
    const auto nbytes = static_cast<uint64_t>(shape_numel(shape)) * dtype_size(dtype);
    check_dataset_storage(file, object.get(), name, nbytes, errors);
    auto read = [open, name, dtype, shape](int64_t first, int64_t count, std::byte* out) {
      read_dataset_rows(*open, name, dtype, shape, first, count, out);
    };
    checkpoint.tensors.emplace(name, StoredTensor(dtype, std::move(shape), std::move(read)));
  }
  return checkpoint;
}

// ---------------------------------------------------------------------------------------------
// Directories

std::string shard_name(int index, int shards) {
  return fmt::format("shard-{:05d}-of-{:05d}.h5", index, shards);
}

bool looks_like_shard(std::string_view name) {
  return name.starts_with("shard-") && name.ends_with(".h5");
}

// Splits the tensors, kept in name order, into `shards` contiguous runs of about equal size: each
// tensor goes to the shard its byte midpoint falls in. Empty tensors weigh one byte so that the
// total is never zero when there are tensors at all.
std::vector<std::vector<const PlannedEntry*>> split_by_bytes(const TensorPlan& tensors, int shards) {
  const auto weight = [](const PlannedTensor& tensor) {
    return static_cast<double>(std::max<size_t>(tensor.nbytes(), 1));
  };
  double total = 0;
  for (const auto& [name, tensor] : tensors) total += weight(tensor);
  std::vector<std::vector<const PlannedEntry*>> parts(static_cast<size_t>(shards));
  double before = 0;
  for (const PlannedEntry& entry : tensors) {
    const double own = weight(entry.second);
    const auto index = static_cast<size_t>((before + own / 2) / total * shards);
    parts[std::min(index, parts.size() - 1)].push_back(&entry);
    before += own;
  }
  return parts;
}

void write_complete_marker(const fs::path& path, int shards, const FileErrors& errors) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << nlohmann::json{{"shards", shards}, {"format_version", kNativeFormatVersion}}.dump()
      << '\n';
  out.close();
  if (!out) errors.fail("cannot write {}", path.string());
}

// COMPLETE is JSON {"format_version": V, "shards": N}; returns N.
int read_complete_marker(const fs::path& path, const FileErrors& errors) {
  std::ifstream in(path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const nlohmann::json marker = hdf5::parse_json_object(text, kCompleteMarker, errors);
  const auto integer = [&](const char* key) -> int64_t {
    const auto it = marker.find(key);
    if (it == marker.end() || !it->is_number_integer())
      errors.fail("{} has no integer '{}'", kCompleteMarker, key);
    return it->get<int64_t>();
  };
  hdf5::check_format_version(integer("format_version"), kNativeFormatVersion, errors);
  const int64_t shards = integer("shards");
  if (shards < 1 || shards > kMaxShards)
    errors.fail("{} names {} shards, not 1..{}", kCompleteMarker, shards, kMaxShards);
  return static_cast<int>(shards);
}

// The shard files of the native checkpoint directory `dir`, in order, after checking the marker
// and that the set is exactly what it names.
std::vector<std::string> directory_shards(const fs::path& dir) {
  const FileErrors errors(dir);
  const fs::path marker = dir / kCompleteMarker;
  std::error_code error;
  if (!fs::is_regular_file(marker, error))
    errors.fail("no {} marker: the checkpoint is incomplete or not a native checkpoint",
                kCompleteMarker);
  const int shards = read_complete_marker(marker, errors);

  std::set<std::string> present;
  for (fs::directory_iterator it(dir, error), end; !error && it != end; it.increment(error)) {
    std::string name = it->path().filename().string();
    if (looks_like_shard(name)) present.insert(std::move(name));
  }
  if (error) errors.fail("cannot list the directory: {}", error.message());
  std::vector<std::string> expected;
  for (int i = 0; i < shards; ++i) {
    expected.push_back(shard_name(i, shards));
    if (!present.erase(expected.back())) errors.fail("missing shard {}", expected.back());
  }
  if (!present.empty())
    errors.fail("unexpected shard file {} in a checkpoint of {} shards", *present.begin(), shards);
  return expected;
}

StoredNativeCheckpoint open_directory(const fs::path& dir) {
  const FileErrors errors(dir);
  // Check the whole set before opening any of it.
  const std::vector<std::string> expected = directory_shards(dir);

  StoredNativeCheckpoint checkpoint;
  std::map<std::string, std::string> holder;  // tensor name -> shard
  for (const std::string& name : expected) {
    StoredNativeCheckpoint shard = open_file(dir / name);
    if (name == expected.front()) {
      checkpoint.config = std::move(shard.config);
      checkpoint.metadata = std::move(shard.metadata);
    } else if (shard.config != checkpoint.config || shard.metadata != checkpoint.metadata) {
      errors.fail("{} has a different config or metadata from {}", name, expected.front());
    }
    for (auto& [tensor_name, tensor] : shard.tensors) {
      const auto [it, inserted] = holder.emplace(tensor_name, name);
      if (!inserted) errors.fail("tensor '{}' is in both {} and {}", tensor_name, it->second, name);
      checkpoint.tensors.emplace(tensor_name, std::move(tensor));
    }
  }
  return checkpoint;
}

}  // namespace

void write_native_checkpoint(const fs::path& file, const nlohmann::json& config, const nlohmann::json& metadata,
                             const TensorPlan& plan) {
  const FileErrors errors(file);
  const StoredText text = validate_for_writing(config, metadata, plan, errors);
  std::vector<const PlannedEntry*> tensors;
  for (const PlannedEntry& entry : plan) tensors.push_back(&entry);

  const QuietHdf5 quiet;
  write_file_atomically(file, [&](const fs::path& temp) { write_file(temp, text, tensors, errors, file.string()); });
}

void write_native_checkpoint(const fs::path& file, const NativeCheckpoint& checkpoint) {
  write_native_checkpoint(file, checkpoint.config, checkpoint.metadata, plan_of(checkpoint.tensors));
}

void write_native_checkpoint_directory(const fs::path& dir, const nlohmann::json& config,
                                       const nlohmann::json& metadata, const TensorPlan& plan, int shards) {
  const FileErrors errors(dir);
  if (shards < 1 || shards > kMaxShards)
    errors.fail("shard count {} is not in 1..{}", shards, kMaxShards);
  const StoredText text = validate_for_writing(config, metadata, plan, errors);
  const std::vector<std::vector<const PlannedEntry*>> parts = split_by_bytes(plan, shards);

  const QuietHdf5 quiet;
  // A previous checkpoint may be replaced, but not a directory of anything else.
  write_directory_atomically(dir, is_native_checkpoint, [&](const fs::path& temp) {
    for (int i = 0; i < shards; ++i) {
      const std::string name = shard_name(i, shards);
      write_file(temp / name, text, parts[static_cast<size_t>(i)], FileErrors(dir / name), (dir / name).string());
    }
    // Last, so that a directory with the marker has all its shards.
    write_complete_marker(temp / kCompleteMarker, shards, errors);
  });
}

void write_native_checkpoint_directory(const fs::path& dir, const NativeCheckpoint& checkpoint,
                                       int shards) {
  write_native_checkpoint_directory(dir, checkpoint.config, checkpoint.metadata, plan_of(checkpoint.tensors),
                                    shards);
}

StoredNativeCheckpoint open_native_checkpoint(const fs::path& path) {
  const QuietHdf5 quiet;
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (fs::is_directory(status)) return open_directory(path);
  if (fs::is_regular_file(status)) return open_file(path);
  if (!fs::exists(status))
    fail("{}: {}", path.string(), error ? error.message() : "no such file or directory");
  fail("{}: not a regular file or directory", path.string());
}

NativeCheckpoint read_native_checkpoint(const fs::path& path) {
  StoredNativeCheckpoint opened = open_native_checkpoint(path);
  return {std::move(opened.config), std::move(opened.metadata), read_all(opened.tensors)};
}

std::vector<fs::path> native_checkpoint_files(const fs::path& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (fs::is_regular_file(status)) return {path};
  if (!fs::exists(status))
    fail("{}: {}", path.string(), error ? error.message() : "no such file or directory");
  if (!fs::is_directory(status)) fail("{}: not a regular file or directory", path.string());
  std::vector<fs::path> files;
  for (const std::string& name : directory_shards(path)) files.push_back(path / name);
  return files;
}

bool is_native_checkpoint(const fs::path& path) {
  std::error_code error;
  const fs::file_status status = fs::status(path, error);
  if (fs::is_regular_file(status)) return looks_like_checkpoint_file(path);
  if (!fs::is_directory(status)) return false;
  if (fs::is_regular_file(path / kCompleteMarker, error)) return true;
  for (fs::directory_iterator it(path, error), end; !error && it != end; it.increment(error))
    if (looks_like_shard(it->path().filename().string())) return true;
  return false;
}

}  // namespace dj
