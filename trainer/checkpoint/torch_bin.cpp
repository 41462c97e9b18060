#include "trainer/checkpoint/torch_bin.h"

#include <zip.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "trainer/checkpoint/torch_pickle.h"

namespace dj {

namespace {

using torch_pickle::StorageRef;
using torch_pickle::TensorRef;

// Storage records hold the host's raw bytes; the "byteorder" record (checked below) says which.
static_assert(std::endian::native == std::endian::little, "torch_bin assumes a little-endian host");

// A state dict's pickle is a few hundred bytes per tensor, small enough to hold in memory at once;
// the bound only stops hostile input from exhausting memory.
constexpr uint64_t kMaxPickleBytes = 64ull << 20;

// ---------------------------------------------------------------------------------------------
// The zip archive.

class ZipArchive {
 public:
  explicit ZipArchive(const std::filesystem::path& path) {
    int code = 0;
    archive_ = zip_open(path.c_str(), ZIP_RDONLY | ZIP_CHECKCONS, &code);
    if (!archive_) {
      zip_error_t error;
      zip_error_init_with_code(&error, code);
      const std::string message = zip_error_strerror(&error);
      zip_error_fini(&error);
      fail("not a zip archive ({})", message);
    }
  }
  ~ZipArchive() { zip_discard(archive_); }
  ZipArchive(const ZipArchive&) = delete;
  ZipArchive& operator=(const ZipArchive&) = delete;

  std::vector<std::string> names() const {
    std::vector<std::string> out;
    const zip_int64_t count = zip_get_num_entries(archive_, 0);
    for (zip_int64_t i = 0; i < count; ++i)
      if (const char* name = zip_get_name(archive_, static_cast<zip_uint64_t>(i), 0))
        out.push_back(name);
    return out;
  }

  // The record's uncompressed size, or nullopt when the archive has no such record.
  std::optional<uint64_t> size(const std::string& name) const {
    const zip_int64_t index = zip_name_locate(archive_, name.c_str(), 0);
    if (index < 0) return std::nullopt;
    return stat(name, static_cast<zip_uint64_t>(index)).size;
  }

  // The whole record. Refuses records larger than `max_bytes`; reading to the end makes libzip
  // verify the CRC, so corrupt data is reported rather than returned.
  std::vector<std::byte> read(const std::string& name, uint64_t max_bytes) const {
    const zip_int64_t index = zip_name_locate(archive_, name.c_str(), 0);
    if (index < 0) fail("the archive has no record '{}'", name);
    const zip_stat_t info = stat(name, static_cast<zip_uint64_t>(index));
    if (info.size > max_bytes)
      fail("record '{}' is {} bytes, more than the {} allowed", name, info.size, max_bytes);

    zip_file_t* file = zip_fopen_index(archive_, static_cast<zip_uint64_t>(index), 0);
    if (!file) fail("cannot open record '{}': {}", name, zip_strerror(archive_));
    std::vector<std::byte> bytes(info.size);
    uint64_t done = 0;
    std::byte extra;
    zip_int64_t n = 0;
    while (done < bytes.size() &&
           (n = zip_fread(file, bytes.data() + done, bytes.size() - done)) > 0)
      done += static_cast<uint64_t>(n);
    if (n >= 0 && done == bytes.size()) n = zip_fread(file, &extra, 1);  // expect end of data
    const std::string error = n < 0 ? zip_file_strerror(file) : "";
    zip_fclose(file);
    if (n < 0) fail("cannot read record '{}': {}", name, error);
    if (done != bytes.size() || n != 0)
      fail("record '{}' does not hold the {} bytes its directory entry declares", name,
           bytes.size());
    return bytes;
  }

  // Bytes [offset, offset + size) of a record, into `out`. Storages are stored uncompressed by
  // torch.save, so libzip seeks to the offset; a compressed record is read up to it. A part of a
  // record is not checked against its CRC (libzip checks that only at the record's end).
  void read_range(const std::string& name, uint64_t offset, uint64_t size, std::byte* out) const {
    const zip_int64_t index = zip_name_locate(archive_, name.c_str(), 0);
    if (index < 0) fail("the archive has no record '{}'", name);
    const zip_stat_t info = stat(name, static_cast<zip_uint64_t>(index));
    if (offset > info.size || size > info.size - offset)
      fail("bytes [{}, {}) are outside record '{}' of {} bytes", offset, offset + size, name, info.size);
    zip_file_t* file = zip_fopen_index(archive_, static_cast<zip_uint64_t>(index), 0);
    if (!file) fail("cannot open record '{}': {}", name, zip_strerror(archive_));
    std::string error;
    const auto read_exactly = [&](std::byte* into, uint64_t bytes) {
      uint64_t done = 0;
      while (done < bytes && error.empty()) {
        const zip_int64_t n = zip_fread(file, into + done, bytes - done);
        if (n <= 0) error = n < 0 ? zip_file_strerror(file) : "record shorter than its directory entry says";
        done += n > 0 ? static_cast<uint64_t>(n) : 0;
      }
    };
    if (offset > 0 && zip_fseek(file, static_cast<zip_int64_t>(offset), SEEK_SET) != 0) {
      std::vector<std::byte> skip(std::min<uint64_t>(offset, 1u << 20));
      for (uint64_t skipped = 0; skipped < offset && error.empty(); skipped += skip.size())
        read_exactly(skip.data(), std::min<uint64_t>(skip.size(), offset - skipped));
    }
    if (error.empty()) read_exactly(out, size);
    zip_fclose(file);
    if (!error.empty()) fail("cannot read record '{}': {}", name, error);
  }

 private:
  zip_stat_t stat(const std::string& name, zip_uint64_t index) const {
    zip_stat_t info;
    zip_stat_init(&info);
    if (zip_stat_index(archive_, index, 0, &info) != 0 || !(info.valid & ZIP_STAT_SIZE))
      fail("cannot read the size of record '{}': {}", name, zip_strerror(archive_));
    return info;
  }

  zip_t* archive_ = nullptr;
};

// ---------------------------------------------------------------------------------------------
// Materialising tensors.

// Checks that every element the view `ref` addresses lies inside its storage of
// `storage_numel` elements.
void check_view(const std::string& name, const TensorRef& ref, int64_t storage_numel) {
  int64_t numel = 1;
  int64_t last = ref.offset;  // the highest element index the view touches
  bool overflow = ref.offset < 0;
  for (size_t d = 0; d < ref.size.size(); ++d) {
    if (ref.size[d] < 0 || ref.stride[d] < 0)
      fail("tensor '{}': negative size or stride (size {}, stride {})", name,
           shape_string(ref.size), shape_string(ref.stride));
    int64_t reach = 0;
    overflow |= __builtin_mul_overflow(numel, ref.size[d], &numel);
    overflow |= ref.size[d] > 0 && __builtin_mul_overflow(ref.size[d] - 1, ref.stride[d], &reach);
    overflow |= __builtin_add_overflow(last, reach, &last);
  }
  if (overflow || (numel > 0 && last >= storage_numel))
    fail(
        "tensor '{}': view exceeds storage '{}' (offset {}, size {}, stride {}; storage holds {} "
        "elements)",
        name, ref.storage.key, ref.offset, shape_string(ref.size), shape_string(ref.stride),
        storage_numel);
}

// Whether the view's elements are laid out row-major without gaps (sizes of 1 take any stride).
bool is_row_major(const TensorRef& ref) {
  int64_t expected = 1;
  for (size_t d = ref.size.size(); d-- > 0;) {
    if (ref.size[d] != 1 && ref.stride[d] != expected) return false;
    expected *= ref.size[d];
  }
  return true;
}

// Copies the view `ref` (checked by check_view) of `storage` into a contiguous tensor.
Tensor copy_view(const TensorRef& ref, std::span<const std::byte> storage) {
  const size_t element = dtype_size(ref.storage.dtype);
  Tensor out(ref.storage.dtype, ref.size);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const std::byte* source = storage.data();
  std::byte* target = out.bytes();
  if (ref.size.empty()) {
    std::memcpy(target, source + ref.offset * static_cast<int64_t>(element), element);
    return out;
  }
  // Walk the rows (all dimensions but the last) in row-major order; copy each row in one memcpy
  // when its elements are adjacent.
  const size_t rank = ref.size.size();
  const int64_t row_length = ref.size[rank - 1];
  const int64_t row_stride = ref.stride[rank - 1];
  std::vector<int64_t> index(rank - 1, 0);
  for (int64_t row = 0; row < numel / row_length; ++row) {
    int64_t start = ref.offset;
    for (size_t d = 0; d + 1 < rank; ++d) start += index[d] * ref.stride[d];
    if (row_stride == 1) {
      std::memcpy(target, source + start * static_cast<int64_t>(element),
                  static_cast<size_t>(row_length) * element);
      target += static_cast<size_t>(row_length) * element;
    } else {
      for (int64_t i = 0; i < row_length; ++i, target += element)
        std::memcpy(target, source + (start + i * row_stride) * static_cast<int64_t>(element),
                    element);
    }
    for (size_t d = rank - 1; d-- > 0;) {
      if (++index[d] < ref.size[d]) break;
      index[d] = 0;
    }
  }
  return out;
}

// The record prefix ("archive/", "pytorch_model/", ...) of the one top-level `*/data.pkl`.
std::string find_prefix(const ZipArchive& archive) {
  std::optional<std::string> prefix;
  for (const std::string& name : archive.names()) {
    const size_t slash = name.find('/');
    const bool pickle =
        name == "data.pkl" || (slash != std::string::npos && name.substr(slash + 1) == "data.pkl");
    if (!pickle) continue;
    if (prefix)
      fail("the archive holds more than one data.pkl ('{}data.pkl' and '{}')", *prefix, name);
    prefix = name.substr(0, name.size() - std::string_view("data.pkl").size());
  }
  if (!prefix) fail("the archive holds no data.pkl (not a torch.save file)");
  return *prefix;
}

StoredTensorMap open_archive(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path))
    fail("{}", std::filesystem::exists(path) ? "not a regular file" : "no such file");
  auto archive = std::make_shared<const ZipArchive>(path);
  const std::string prefix = find_prefix(*archive);
  if (archive->size(prefix + "byteorder")) {
    const std::vector<std::byte> order = archive->read(prefix + "byteorder", 16);
    const std::string_view text(reinterpret_cast<const char*>(order.data()), order.size());
    if (text != "little")
      fail("storages are stored in '{}' byte order; only little-endian is supported", text);
  }
  const std::vector<std::byte> pickle = archive->read(prefix + "data.pkl", kMaxPickleBytes);
  const std::vector<std::pair<std::string, TensorRef>> entries = torch_pickle::read_state_dict(pickle);
  // Every storage record and view is checked against the archive's directory here; the data is
  // read per tensor when asked (a storage shared by views or tied weights is read by each).
  std::map<std::string, const std::pair<std::string, TensorRef>*> first_user;  // storage key -> tensor
  StoredTensorMap tensors;
  for (const auto& entry : entries) {
    const std::string& name = entry.first;
    const TensorRef& ref = entry.second;
    const StorageRef& storage = ref.storage;
    const auto [first, inserted] = first_user.emplace(storage.key, &entry);
    if (!inserted && (first->second->second.storage.dtype != storage.dtype ||
                      first->second->second.storage.numel != storage.numel))
      fail("storage '{}' is declared with different types or sizes (tensors '{}' and '{}')", storage.key,
           first->second->first, name);
    const std::string record = prefix + "data/" + storage.key;
    const std::optional<uint64_t> record_bytes = archive->size(record);
    if (!record_bytes) fail("tensor '{}': the archive has no storage record '{}'", name, record);
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(storage.numel), dtype_size(storage.dtype), &bytes))
      fail("storage '{}' declares an impossible {} elements", storage.key, storage.numel);
    if (bytes != *record_bytes)
      fail("storage '{}' holds {} bytes but is declared as {} elements of {} ({} bytes)", storage.key,
           *record_bytes, storage.numel, dtype_name(storage.dtype), bytes);
    check_view(name, ref, storage.numel);
    // Some rows of a row-major view are one byte range of the record, read alone; the whole
    // tensor, or any rows of another view, come from the whole record (its CRC checked).
    const bool row_major = is_row_major(ref);
    const auto read = [archive, ref, record, bytes, row_major, path = path.string()](int64_t first_row, int64_t count,
                                                                                     std::byte* out) {
      try {
        const size_t element = dtype_size(ref.storage.dtype);
        const int64_t row_numel = ref.size.empty() ? 1 : shape_numel(Shape(ref.size.begin() + 1, ref.size.end()));
        if (row_major && count < (ref.size.empty() ? 1 : ref.size[0])) {
          archive->read_range(record, static_cast<uint64_t>(ref.offset + first_row * row_numel) * element,
                              static_cast<uint64_t>(count * row_numel) * element, out);
          return;
        }
        const Tensor whole = copy_view(ref, archive->read(record, bytes));
        const size_t row_bytes =
            ref.size.empty() ? whole.nbytes() : whole.nbytes() / static_cast<size_t>(ref.size[0]);
        std::memcpy(out, whole.bytes() + static_cast<size_t>(first_row) * row_bytes,
                    static_cast<size_t>(count) * row_bytes);
      } catch (const Error& e) {
        fail("{}: {}", path, e.what());
      }
    };
    if (!tensors.emplace(name, StoredTensor(storage.dtype, ref.size, read)).second)
      fail("tensor '{}' appears twice in the state dict", name);
  }
  return tensors;
}

}  // namespace

StoredTensorMap open_torch_bin(const std::filesystem::path& path) {
  try {
    return open_archive(path);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

TensorMap read_torch_bin(const std::filesystem::path& path) { return read_all(open_torch_bin(path)); }

}  // namespace dj
