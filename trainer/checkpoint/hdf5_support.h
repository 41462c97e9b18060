// HDF5 plumbing shared by the checkpoint formats that use the HDF5 C API (native.cpp and
// flat_checkpoint.cpp); internal to trainer/checkpoint.
//
// The pattern: a QuietHdf5 is held for the duration of each public call, every identifier is owned
// by a Handle so that error paths leak nothing, and every failed HDF5 call goes through a
// FileErrors, which throws a dj::Error naming the file with HDF5's innermost reason appended.
#pragma once
#include <fmt/format.h>
#include <hdf5.h>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/checkpoint/checksum.h"

namespace dj::hdf5 {

// Switches HDF5's automatic printing of its error stack to stderr off while it lives and restores
// the previous setting when destroyed; errors are reported through FileErrors instead. The
// thread-safe library keeps the setting per thread, hence one of these around each public call
// rather than a global switch.
class QuietHdf5 {
 public:
  QuietHdf5() {
    H5Eget_auto2(H5E_DEFAULT, &function_, &data_);
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  }
  ~QuietHdf5() { H5Eset_auto2(H5E_DEFAULT, function_, data_); }
  QuietHdf5(const QuietHdf5&) = delete;
  QuietHdf5& operator=(const QuietHdf5&) = delete;

 private:
  H5E_auto2_t function_ = nullptr;
  void* data_ = nullptr;
};

// Owns one HDF5 identifier and closes it with the matching H5?close when destroyed (unless it is
// invalid or was closed already). Movable, not copyable.
class Handle {
 public:
  using Closer = herr_t (*)(hid_t);
  Handle(hid_t id, Closer closer) : id_(id), closer_(closer) {}
  Handle(Handle&& other) noexcept
      : id_(std::exchange(other.id_, H5I_INVALID_HID)), closer_(other.closer_) {}
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle& operator=(Handle&&) = delete;
  ~Handle() {
    if (id_ >= 0) closer_(id_);
  }

  hid_t get() const { return id_; }
  // Closes now and returns the status: closing a file flushes it, and that can fail.
  herr_t close() { return closer_(std::exchange(id_, H5I_INVALID_HID)); }

 private:
  hid_t id_;
  Closer closer_;
};

// Error reporting for one file (or directory): every message starts with its path.
class FileErrors {
 public:
  explicit FileErrors(const std::filesystem::path& file) : file_(file.string()) {}

  // Throws dj::Error "<path>: <message>".
  template <typename... Args>
  [[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) const {
    dj::fail("{}: {}", file_, fmt::format(format, std::forward<Args>(args)...));
  }
  // A failed HDF5 call: throws "<path>: <what> (<HDF5's reason>)", or "<path>: <what>" when the
  // error stack gives no reason. Clears the thread's HDF5 error stack.
  [[noreturn]] void fail_hdf5(std::string_view what) const;
  // Fails as fail_hdf5(what) if `status` is negative.
  void check(herr_t status, std::string_view what) const {
    if (status < 0) fail_hdf5(what);
  }
  // Takes ownership of `id`, or fails as fail_hdf5(what) if it is invalid (negative).
  Handle own(hid_t id, Handle::Closer closer, std::string_view what) const {
    if (id < 0) fail_hdf5(what);
    return Handle(id, closer);
  }

 private:
  std::string file_;
};

// ---------------------------------------------------------------------------------------------
// Files

// Creates `path`, which must not exist yet, with the user block that holds its checksum (see
// checksum.h). The file is opened with the strong close degree: closing it closes whatever is
// still open in it, so that it can be renamed or removed even after an error.
Handle create_file(const std::filesystem::path& path, const FileErrors& errors);

// Verifies the checksum of `path` (verify_checkpoint_file: a damaged, truncated or foreign file
// fails here, before HDF5 reads any of it), then opens it read-only with the strong close degree.
Handle open_verified_file(const std::filesystem::path& path, const FileErrors& errors,
                          ChecksumCheck check = ChecksumCheck::bytes);

// Flushes and closes `file`, created at `path` by create_file, failing if either step does (a
// destructor would ignore it), then writes its checksum.
void close_and_seal(Handle& file, const std::filesystem::path& path, const FileErrors& errors);

// A dataset creation property list without modification times, so that the same content always
// produces the same bytes.
Handle untimed_dataset_creation(const FileErrors& errors);

// Fails unless `version` is between 1 and `supported`, the newest this build reads.
void check_format_version(int64_t version, int64_t supported, const FileErrors& errors);

// ---------------------------------------------------------------------------------------------
// Datasets

// Returns the storage layout of `dataset`, failing for a dataset whose data is kept outside the
// file (virtual datasets and external storage read other files).
H5D_layout_t layout_within_file(hid_t dataset, const std::string& name, const FileErrors& errors);

// For a contiguous dataset: whether its `nbytes` of data lie inside the file as it is now on disk
// (a truncated file fails this).
bool contiguous_data_in_file(hid_t file, hid_t dataset, uint64_t nbytes, const FileErrors& errors);

// ---------------------------------------------------------------------------------------------
// Scalar attributes
//
// Writers create the attribute `name` on `object` (which must not have it yet). Readers accept
// only a scalar attribute of the right class and name it in errors as `label`, by default
// "attribute '<name>'".

void write_scalar_attribute(hid_t object, const char* name, hid_t type, const void* value,
                            const FileErrors& errors);
// Stored as little-endian int64.
void write_integer_attribute(hid_t object, const char* name, int64_t value,
                             const FileErrors& errors);
// Stored as a variable-length UTF-8 string, which h5py returns as str. The text lives in the
// global heap, so a large JSON config is not subject to the 64 KiB limit on an attribute's size.
void write_string_attribute(hid_t object, const char* name, const std::string& value,
                            const FileErrors& errors);

// Accepts variable- and fixed-length strings (h5py writes the latter for numpy bytes); a
// fixed-length string ends at its first null whatever padding the file used.
std::string read_string_attribute(hid_t object, const char* name, const std::string& label,
                                  const FileErrors& errors);
std::string read_string_attribute(hid_t object, const char* name, const FileErrors& errors);
// Accepts any integer type; HDF5 converts the value to int64.
int64_t read_integer_attribute(hid_t object, const char* name, const std::string& label,
                               const FileErrors& errors);
int64_t read_integer_attribute(hid_t object, const char* name, const FileErrors& errors);

// ---------------------------------------------------------------------------------------------
// JSON held in string attributes (and marker files)

// Parses `text`, failing unless it is a JSON object; `label` names it in errors.
nlohmann::json parse_json_object(const std::string& text, std::string_view label,
                                 const FileErrors& errors);
// Serializes `value`, failing unless it is a JSON object that can be dumped (valid UTF-8).
std::string dump_json_object(const nlohmann::json& value, std::string_view label,
                             const FileErrors& errors);

}  // namespace dj::hdf5
