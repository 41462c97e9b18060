#include "trainer/checkpoint/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <array>
#include <bit>
#include <cstring>
#include <fstream>
#include <memory>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <vector>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"

namespace dj {

namespace {

// The file stores little-endian values, which the readers and writers here copy byte for byte.
static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

// The reference implementation's limit; it keeps a corrupt length from allocating gigabytes.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin;
  uint64_t end;
};

// Byte size of `shape` in `dtype`, or nullopt when it does not fit in 64 bits (a hostile shape).
std::optional<uint64_t> checked_nbytes(const Shape& shape, DType dtype) {
  uint64_t bytes = dtype_size(dtype);
  for (int64_t dim : shape)
    if (__builtin_mul_overflow(bytes, static_cast<uint64_t>(dim), &bytes)) return std::nullopt;
  return bytes;
}

std::string offsets_string(const Entry& entry) {
  return fmt::format("[{}, {}]", entry.begin, entry.end);
}

// Parses the header, rejecting duplicate top-level keys, which nlohmann would silently merge.
nlohmann::json parse_header(const std::string& text) {
  std::optional<std::string> duplicate;
  std::set<std::string> keys;
  const auto note_duplicates = [&](int depth, nlohmann::json::parse_event_t event,
                                   nlohmann::json& parsed) {
    if (depth == 1 && event == nlohmann::json::parse_event_t::key && parsed.is_string() &&
        !keys.insert(parsed.get<std::string>()).second && !duplicate)
      duplicate = parsed.get<std::string>();
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, note_duplicates);
  } catch (const nlohmann::json::exception& e) {
    fail("bad JSON header: {}", e.what());
  }
  if (duplicate) fail("duplicate tensor name '{}' in the header", *duplicate);
  if (!header.is_object()) fail("bad header: expected a JSON object, got {}", header.type_name());
  return header;
}

uint64_t unsigned_field(const nlohmann::json& value, const std::string& name, const char* what) {
  if (!value.is_number_unsigned())
    fail("tensor '{}': {} must hold non-negative integers, got {}", name, what, value.dump());
  return value.get<uint64_t>();
}

Entry parse_entry(const std::string& name, const nlohmann::json& info) {
  if (!info.is_object()) fail("tensor '{}': expected a JSON object, got {}", name, info.dump());
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!info.contains(field)) fail("tensor '{}': missing field '{}'", name, field);

  const nlohmann::json& dtype_json = info["dtype"];
  if (!dtype_json.is_string())
    fail("tensor '{}': dtype must be a string, got {}", name, dtype_json.dump());
  const std::optional<DType> dtype = dtype_from_name(dtype_json.get<std::string>());
  if (!dtype) fail("tensor '{}': unknown dtype '{}'", name, dtype_json.get<std::string>());

  const nlohmann::json& shape_json = info["shape"];
  if (!shape_json.is_array())
    fail("tensor '{}': shape must be a list, got {}", name, shape_json.dump());
  Shape shape;
  for (const nlohmann::json& dim : shape_json) {
    const uint64_t value = unsigned_field(dim, name, "shape");
    if (value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail("tensor '{}': dimension {} is too large", name, value);
    shape.push_back(static_cast<int64_t>(value));
  }

  const nlohmann::json& offsets = info["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2)
    fail("tensor '{}': data_offsets must be [begin, end], got {}", name, offsets.dump());
  Entry entry{name, *dtype, std::move(shape), unsigned_field(offsets[0], name, "data_offsets"),
              unsigned_field(offsets[1], name, "data_offsets")};
  if (entry.end < entry.begin)
    fail("tensor '{}': data_offsets {} end before they begin", name, offsets_string(entry));

  const std::optional<uint64_t> needed = checked_nbytes(entry.shape, entry.dtype);
  if (!needed || *needed != entry.end - entry.begin)
    fail("tensor '{}': data_offsets {} hold {} bytes but shape {} of {} needs {}", name,
         offsets_string(entry), entry.end - entry.begin, shape_string(entry.shape),
         dtype_name(entry.dtype), needed ? fmt::to_string(*needed) : std::string("more than 2^64"));
  return entry;
}

std::map<std::string, std::string> parse_metadata(const nlohmann::json& metadata) {
  if (!metadata.is_object())
    fail("{} must be an object of strings, got {}", kMetadataKey, metadata.dump());
  std::map<std::string, std::string> out;
  for (const auto& [key, value] : metadata.items()) {
    if (!value.is_string())
      fail("{} value for '{}' must be a string, got {}", kMetadataKey, key, value.dump());
    out.emplace(key, value.get<std::string>());
  }
  return out;
}

// The tensors must cover [0, data_bytes) exactly once: anything else means a corrupt file or a
// writer bug, and reading it would silently hand back wrong weights.
void check_tiling(std::vector<Entry>& entries, uint64_t data_bytes) {
  for (const Entry& entry : entries)
    if (entry.end > data_bytes)
      fail(
          "tensor '{}': data_offsets {} extend beyond the data region of {} bytes (truncated "
          "file?)",
          entry.name, offsets_string(entry), data_bytes);
  // Ties by end so that empty tensors sort before a tensor starting at the same offset.
  std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (const Entry& entry : entries) {
    if (entry.begin > covered)
      fail("bytes [{}, {}) of the data region belong to no tensor (a hole before tensor '{}')",
           covered, entry.begin, entry.name);
    if (entry.begin < covered)
      fail("tensor '{}' (data_offsets {}) overlaps tensor '{}' (data_offsets {})", entry.name,
           offsets_string(entry), previous->name, offsets_string(*previous));
    if (entry.end > entry.begin) {
      covered = entry.end;
      previous = &entry;
    }
  }
  if (covered != data_bytes)
    fail("bytes [{}, {}) of the data region belong to no tensor (after the last tensor)", covered,
         data_bytes);
}

// The file, opened once and shared by the readers of its tensors (pread: no shared position).
class SharedFile {
 public:
  explicit SharedFile(const std::filesystem::path& path) : path_(path.string()) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) fail("cannot open for reading: {}", std::strerror(errno));
  }
  ~SharedFile() { ::close(fd_); }
  SharedFile(const SharedFile&) = delete;
  SharedFile& operator=(const SharedFile&) = delete;

  const std::string& path() const { return path_; }

  void read_exactly(std::byte* out, uint64_t size, uint64_t offset, const std::string& what) const {
    uint64_t done = 0;
    while (done < size) {
      const ssize_t n = ::pread(fd_, out + done, static_cast<size_t>(std::min<uint64_t>(size - done, 1u << 30)),
                                static_cast<off_t>(offset + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0)
        fail("cannot read {} ({} bytes at offset {}): {}", what, size, offset,
             n < 0 ? std::strerror(errno) : "file truncated");
      done += static_cast<uint64_t>(n);
    }
  }

 private:
  std::string path_;
  int fd_ = -1;
};

StoredTensorMap open_file(const std::filesystem::path& path, std::map<std::string, std::string>* metadata) {
  std::error_code ec;
  const uint64_t file_bytes = std::filesystem::file_size(path, ec);
  if (ec) fail("cannot read: {}", ec.message());
  auto file = std::make_shared<const SharedFile>(path);
  if (file_bytes < 8)
    fail("truncated: {} bytes, too short for the 8-byte header length", file_bytes);

  std::array<std::byte, 8> length_bytes;
  file->read_exactly(length_bytes.data(), 8, 0, "the header length");
  uint64_t header_bytes;
  std::memcpy(&header_bytes, length_bytes.data(), 8);
  if (header_bytes > kMaxHeaderBytes)
    fail("header length {} exceeds the limit of {} bytes", header_bytes, kMaxHeaderBytes);
  if (header_bytes > file_bytes - 8)
    fail("header length {} extends beyond the end of the file ({} bytes; truncated?)", header_bytes,
         file_bytes);

  std::string text(header_bytes, '\0');
  file->read_exactly(reinterpret_cast<std::byte*>(text.data()), header_bytes, 8, "the header");
  const nlohmann::json header = parse_header(text);

  std::vector<Entry> entries;
  std::map<std::string, std::string> parsed_metadata;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey)
      parsed_metadata = parse_metadata(info);
    else
      entries.push_back(parse_entry(name, info));
  }

  const uint64_t data_start = 8 + header_bytes;
  check_tiling(entries, file_bytes - data_start);

  StoredTensorMap tensors;
  for (const Entry& entry : entries) {
    const int64_t row_numel = entry.shape.empty() ? 1 : shape_numel(Shape(entry.shape.begin() + 1, entry.shape.end()));
    const uint64_t row_bytes = static_cast<uint64_t>(row_numel) * dtype_size(entry.dtype);
    const uint64_t begin = data_start + entry.begin;
    tensors.emplace(entry.name,
                    StoredTensor(entry.dtype, entry.shape,
                                 [file, begin, row_bytes, name = entry.name](int64_t first, int64_t count, std::byte* out) {
                                   try {
                                     file->read_exactly(out, static_cast<uint64_t>(count) * row_bytes,
                                                        begin + static_cast<uint64_t>(first) * row_bytes,
                                                        fmt::format("tensor '{}'", name));
                                   } catch (const Error& e) {
                                     fail("{}: {}", file->path(), e.what());
                                   }
                                 }));
  }
  if (metadata) *metadata = std::move(parsed_metadata);
  return tensors;
}

}  // namespace

StoredTensorMap open_safetensors(const std::filesystem::path& path, std::map<std::string, std::string>* metadata) {
  try {
    return open_file(path, metadata);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

TensorMap read_safetensors(const std::filesystem::path& path,
                           std::map<std::string, std::string>* metadata) {
  return read_all(open_safetensors(path, metadata));
}

void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  write_planned_safetensors(path, plan_of(tensors), metadata);
}

void write_planned_safetensors(const std::filesystem::path& path, const TensorPlan& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the reference layout: metadata first, then tensors in name order (the
  // map's order), each with dtype, shape, data_offsets. Equal inputs give byte-identical files.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == kMetadataKey)
      fail("{}: '{}' is reserved and cannot name a tensor", path.string(), name);
    header[name] = {{"dtype", std::string(dtype_name(tensor.dtype))},
                    {"shape", tensor.shape},
                    {"data_offsets", {offset, offset + tensor.nbytes()}}};
    offset += tensor.nbytes();
  }
  std::string text = header.dump();
  // Pad with spaces (valid trailing JSON whitespace) so the data region starts 8-byte aligned.
  text.append((8 - text.size() % 8) % 8, ' ');

  write_file_atomically(path, [&](const std::filesystem::path& temp) {
    std::ofstream out(temp, std::ios::binary | std::ios::trunc);
    if (!out) fail("{}: cannot create {}", path.string(), temp.string());
    const uint64_t header_bytes = text.size();
    out.write(reinterpret_cast<const char*>(&header_bytes), sizeof header_bytes);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    // One tensor made and held at a time.
    for (const auto& [name, planned] : tensors) {
      const Tensor tensor = make_planned(name, planned, path.string());
      out.write(reinterpret_cast<const char*>(tensor.bytes()), static_cast<std::streamsize>(tensor.nbytes()));
    }
    out.close();
    if (!out) fail("{}: write to {} failed", path.string(), temp.string());
  });
}

}  // namespace dj
