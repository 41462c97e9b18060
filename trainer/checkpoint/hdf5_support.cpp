#include "trainer/checkpoint/hdf5_support.h"

#include <cstring>
#include <memory>
#include <string_view>


namespace dj::hdf5 {
namespace {

namespace fs = std::filesystem;

// The most specific description on HDF5's error stack ("truncated file: eof = ..."), or "".
// Clears the stack.
std::string take_hdf5_reason() {
  const char* reason = nullptr;
  H5Ewalk2(
      H5E_DEFAULT, H5E_WALK_UPWARD,
      [](unsigned, const H5E_error2_t* error, void* out) -> herr_t {
        auto& first = *static_cast<const char**>(out);
        if (first == nullptr && error->desc != nullptr && *error->desc != '\0') first = error->desc;
        return 0;
      },
      &reason);
  std::string text = reason != nullptr ? reason : "";
  H5Eclear2(H5E_DEFAULT);
  // A failed read or write of the file driver reports "file write failed: time = ..., filename =
  // ..., errno = 28, error message = 'No space left on device', buf = ...": the system's message
  // is the reason.
  constexpr std::string_view kSystem = "error message = '";
  if (const size_t at = text.find(kSystem); at != std::string::npos) {
    const size_t begin = at + kSystem.size(), end = text.find('\'', begin);
    if (end != std::string::npos) text = text.substr(begin, end - begin);
  }
  return text;
}

// HDF5 closes what is still open when the program exits, from an atexit handler. A file whose
// close failed (its final flush hit a full disk) stays registered, and closing it again there
// crashes HDF5 1.10 (H5F__close_cb). Every file here is closed explicitly, so the handler is
// switched off; it must be before the library initialises, hence a static initialiser.
const bool kNoAtexit = [] {
  H5dont_atexit();
  return true;
}();

// A file access property list with the strong close degree.
Handle file_access_list(const FileErrors& errors) {
  Handle access = errors.own(H5Pcreate(H5P_FILE_ACCESS), H5Pclose, "cannot create a property list");
  errors.check(H5Pset_fclose_degree(access.get(), H5F_CLOSE_STRONG), "cannot set the close degree");
  return access;
}

std::string attribute_label(const char* name) { return fmt::format("attribute '{}'", name); }

// The scalar attribute `name` of `object`.
Handle open_scalar_attribute(hid_t object, const char* name, const std::string& label,
                             const FileErrors& errors) {
  const htri_t exists = H5Aexists(object, name);
  errors.check(exists, fmt::format("cannot look up {}", label));
  if (exists == 0) errors.fail("missing {}", label);
  Handle attribute = errors.own(H5Aopen(object, name, H5P_DEFAULT), H5Aclose,
                                fmt::format("cannot open {}", label));
  Handle space =
      errors.own(H5Aget_space(attribute.get()), H5Sclose, fmt::format("cannot read {}", label));
  if (H5Sget_simple_extent_type(space.get()) != H5S_SCALAR)
    errors.fail("{} is not a scalar", label);
  return attribute;
}

}  // namespace

void FileErrors::fail_hdf5(std::string_view what) const {
  const std::string reason = take_hdf5_reason();
  if (reason.empty()) dj::fail("{}: {}", file_, what);
  dj::fail("{}: {} ({})", file_, what, reason);
}

// ---------------------------------------------------------------------------------------------
// Files

Handle create_file(const fs::path& path, const FileErrors& errors) {
  Handle access = file_access_list(errors);
  Handle creation = errors.own(H5Pcreate(H5P_FILE_CREATE), H5Pclose, "cannot create a property list");
  errors.check(H5Pset_userblock(creation.get(), kChecksumBlockBytes), "cannot reserve the checksum block");
  return errors.own(H5Fcreate(path.c_str(), H5F_ACC_EXCL, creation.get(), access.get()), H5Fclose,
                    "cannot create the file");
}

Handle open_verified_file(const fs::path& path, const FileErrors& errors, ChecksumCheck check) {
  verify_checkpoint_file(path, check);
  Handle access = file_access_list(errors);
  return errors.own(H5Fopen(path.c_str(), H5F_ACC_RDONLY, access.get()), H5Fclose,
                    "cannot open the HDF5 file");
}

void close_and_seal(Handle& file, const fs::path& path, const FileErrors& errors) {
  errors.check(H5Fflush(file.get(), H5F_SCOPE_GLOBAL), "cannot flush the file");
  errors.check(file.close(), "cannot close the file");
  seal_checkpoint_file(path);
}

Handle untimed_dataset_creation(const FileErrors& errors) {
  Handle creation =
      errors.own(H5Pcreate(H5P_DATASET_CREATE), H5Pclose, "cannot create a property list");
  errors.check(H5Pset_obj_track_times(creation.get(), false), "cannot disable time tracking");
  return creation;
}

void check_format_version(int64_t version, int64_t supported, const FileErrors& errors) {
  if (version > supported)
    errors.fail("format_version {} is newer than this build reads ({})", version, supported);
  if (version < 1) errors.fail("format_version {} is not valid", version);
}

// ---------------------------------------------------------------------------------------------
// Datasets

H5D_layout_t layout_within_file(hid_t dataset, const std::string& name, const FileErrors& errors) {
  const std::string what = fmt::format("cannot inspect dataset '{}'", name);
  Handle creation = errors.own(H5Dget_create_plist(dataset), H5Pclose, what);
  const H5D_layout_t layout = H5Pget_layout(creation.get());
  if (layout < 0) errors.fail_hdf5(what);
  if (layout == H5D_VIRTUAL || H5Pget_external_count(creation.get()) != 0)
    errors.fail("dataset '{}' keeps its data outside the file", name);
  return layout;
}

bool contiguous_data_in_file(hid_t file, hid_t dataset, uint64_t nbytes, const FileErrors& errors) {
  const haddr_t offset = H5Dget_offset(dataset);
  hsize_t file_size = 0;
  errors.check(H5Fget_filesize(file, &file_size), "cannot read the file size");
  return offset != HADDR_UNDEF && offset <= file_size && file_size - offset >= nbytes;
}

// ---------------------------------------------------------------------------------------------
// Scalar attributes

void write_scalar_attribute(hid_t object, const char* name, hid_t type, const void* value,
                            const FileErrors& errors) {
  Handle space = errors.own(H5Screate(H5S_SCALAR), H5Sclose, "cannot create a dataspace");
  Handle attribute =
      errors.own(H5Acreate2(object, name, type, space.get(), H5P_DEFAULT, H5P_DEFAULT), H5Aclose,
                 fmt::format("cannot create attribute '{}'", name));
  errors.check(H5Awrite(attribute.get(), type, value),
               fmt::format("cannot write attribute '{}'", name));
}

void write_integer_attribute(hid_t object, const char* name, int64_t value,
                             const FileErrors& errors) {
  write_scalar_attribute(object, name, H5T_STD_I64LE, &value, errors);
}

void write_string_attribute(hid_t object, const char* name, const std::string& value,
                            const FileErrors& errors) {
  Handle type = errors.own(H5Tcopy(H5T_C_S1), H5Tclose, "cannot copy a datatype");
  errors.check(H5Tset_size(type.get(), H5T_VARIABLE), "cannot build a string type");
  errors.check(H5Tset_cset(type.get(), H5T_CSET_UTF8), "cannot build a string type");
  const char* text = value.c_str();
  write_scalar_attribute(object, name, type.get(), &text, errors);
}

std::string read_string_attribute(hid_t object, const char* name, const std::string& label,
                                  const FileErrors& errors) {
  Handle attribute = open_scalar_attribute(object, name, label, errors);
  const std::string what = fmt::format("cannot read {}", label);
  Handle type = errors.own(H5Aget_type(attribute.get()), H5Tclose, what);
  if (H5Tget_class(type.get()) != H5T_STRING) errors.fail("{} is not a string", label);
  const htri_t variable = H5Tis_variable_str(type.get());
  errors.check(variable, what);
  // One byte more than stored for a fixed-length string: converting to a null-terminated type
  // of that size terminates the text whatever padding the file used.
  const size_t fixed_size = variable > 0 ? 0 : H5Tget_size(type.get()) + 1;
  Handle memory = errors.own(H5Tcopy(H5T_C_S1), H5Tclose, "cannot copy a datatype");
  errors.check(H5Tset_size(memory.get(), variable > 0 ? H5T_VARIABLE : fixed_size),
               "cannot build a string type");
  // HDF5 converts between strings only of the same character set.
  errors.check(H5Tset_cset(memory.get(), H5Tget_cset(type.get())), "cannot build a string type");
  if (variable > 0) {
    char* text = nullptr;
    errors.check(H5Aread(attribute.get(), memory.get(), &text), what);
    const std::unique_ptr<char, herr_t (*)(void*)> owned(text, H5free_memory);
    return text != nullptr ? std::string(text) : std::string();
  }
  std::string text(fixed_size, '\0');
  errors.check(H5Aread(attribute.get(), memory.get(), text.data()), what);
  text.resize(std::strlen(text.c_str()));
  return text;
}

std::string read_string_attribute(hid_t object, const char* name, const FileErrors& errors) {
  return read_string_attribute(object, name, attribute_label(name), errors);
}

int64_t read_integer_attribute(hid_t object, const char* name, const std::string& label,
                               const FileErrors& errors) {
  Handle attribute = open_scalar_attribute(object, name, label, errors);
  const std::string what = fmt::format("cannot read {}", label);
  Handle type = errors.own(H5Aget_type(attribute.get()), H5Tclose, what);
  if (H5Tget_class(type.get()) != H5T_INTEGER) errors.fail("{} is not an integer", label);
  int64_t value = 0;
  errors.check(H5Aread(attribute.get(), H5T_NATIVE_INT64, &value), what);
  return value;
}

int64_t read_integer_attribute(hid_t object, const char* name, const FileErrors& errors) {
  return read_integer_attribute(object, name, attribute_label(name), errors);
}

// ---------------------------------------------------------------------------------------------
// JSON

nlohmann::json parse_json_object(const std::string& text, std::string_view label,
                                 const FileErrors& errors) {
  nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) errors.fail("{} is not valid JSON", label);
  if (!value.is_object()) errors.fail("{} is not a JSON object", label);
  return value;
}

std::string dump_json_object(const nlohmann::json& value, std::string_view label,
                             const FileErrors& errors) {
  if (!value.is_object()) errors.fail("{} must be a JSON object", label);
  try {
    return value.dump();
  } catch (const nlohmann::json::exception& error) {  // invalid UTF-8 in a string
    errors.fail("{} cannot be stored: {}", label, error.what());
  }
}

}  // namespace dj::hdf5
