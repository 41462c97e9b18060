#include "trainer/checkpoint/torch_bin.h"

#include <zip.h>

#include <bit>
#include <cstring>
#include <map>
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

// Copies the view `ref` of `storage` into a contiguous tensor, after checking that every element
// it addresses lies inside the storage.
Tensor copy_view(const std::string& name, const TensorRef& ref,
                 std::span<const std::byte> storage) {
  const size_t element = dtype_size(ref.storage.dtype);
  const int64_t storage_numel = static_cast<int64_t>(storage.size() / element);
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

  Tensor out(ref.storage.dtype, ref.size);
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

TensorMap read_archive(const std::filesystem::path& path) {
  if (!std::filesystem::is_regular_file(path))
    fail("{}", std::filesystem::exists(path) ? "not a regular file" : "no such file");
  const ZipArchive archive(path);
  const std::string prefix = find_prefix(archive);
  if (archive.size(prefix + "byteorder")) {
    const std::vector<std::byte> order = archive.read(prefix + "byteorder", 16);
    const std::string_view text(reinterpret_cast<const char*>(order.data()), order.size());
    if (text != "little")
      fail("storages are stored in '{}' byte order; only little-endian is supported", text);
  }

  const std::vector<std::byte> pickle = archive.read(prefix + "data.pkl", kMaxPickleBytes);
  const std::vector<std::pair<std::string, TensorRef>> entries = torch_pickle::read_state_dict(pickle);

  // Tensors may share a storage (views, tied weights): load each storage once, materialise its
  // tensors, then release it, so at most one storage is held beside the results.
  std::map<std::string, std::vector<const std::pair<std::string, TensorRef>*>> by_storage;
  for (const auto& entry : entries) by_storage[entry.second.storage.key].push_back(&entry);

  TensorMap tensors;
  for (const auto& [key, users] : by_storage) {
    const StorageRef& storage = users.front()->second.storage;
    for (const auto* user : users)
      if (user->second.storage.dtype != storage.dtype ||
          user->second.storage.numel != storage.numel)
        fail("storage '{}' is declared with different types or sizes (tensors '{}' and '{}')", key,
             users.front()->first, user->first);
    const std::string record = prefix + "data/" + key;
    const std::optional<uint64_t> record_bytes = archive.size(record);
    if (!record_bytes)
      fail("tensor '{}': the archive has no storage record '{}'", users.front()->first, record);
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(storage.numel), dtype_size(storage.dtype),
                               &bytes))
      fail("storage '{}' declares an impossible {} elements", key, storage.numel);
    if (bytes != *record_bytes)
      fail("storage '{}' holds {} bytes but is declared as {} elements of {} ({} bytes)", key,
           *record_bytes, storage.numel, dtype_name(storage.dtype), bytes);
    const std::vector<std::byte> data = archive.read(record, bytes);
    for (const auto* user : users) {
      if (!tensors.emplace(user->first, copy_view(user->first, user->second, data)).second)
        fail("tensor '{}' appears twice in the state dict", user->first);
    }
  }
  return tensors;
}

}  // namespace

TensorMap read_torch_bin(const std::filesystem::path& path) {
  try {
    return read_archive(path);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

}  // namespace dj
