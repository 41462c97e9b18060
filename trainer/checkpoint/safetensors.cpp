#include "trainer/checkpoint/safetensors.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <fstream>
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

void read_exactly(std::ifstream& in, std::byte* out, uint64_t size, uint64_t offset,
                  const char* what) {
  in.seekg(static_cast<std::streamoff>(offset));
  in.read(reinterpret_cast<char*>(out), static_cast<std::streamsize>(size));
  if (!in || static_cast<uint64_t>(in.gcount()) != size)
    fail("cannot read {} ({} bytes at offset {}): file truncated or unreadable", what, size,
         offset);
}

TensorMap read_file(const std::filesystem::path& path,
                    std::map<std::string, std::string>* metadata) {
  std::error_code ec;
  const uint64_t file_bytes = std::filesystem::file_size(path, ec);
  if (ec) fail("cannot read: {}", ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open for reading");
  if (file_bytes < 8)
    fail("truncated: {} bytes, too short for the 8-byte header length", file_bytes);

  std::array<std::byte, 8> length_bytes;
  read_exactly(in, length_bytes.data(), 8, 0, "the header length");
  uint64_t header_bytes;
  std::memcpy(&header_bytes, length_bytes.data(), 8);
  if (header_bytes > kMaxHeaderBytes)
    fail("header length {} exceeds the limit of {} bytes", header_bytes, kMaxHeaderBytes);
  if (header_bytes > file_bytes - 8)
    fail("header length {} extends beyond the end of the file ({} bytes; truncated?)", header_bytes,
         file_bytes);

  std::string text(header_bytes, '\0');
  read_exactly(in, reinterpret_cast<std::byte*>(text.data()), header_bytes, 8, "the header");
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

  TensorMap tensors;
  for (const Entry& entry : entries) {
    Tensor tensor(entry.dtype, entry.shape);
    const std::string what = fmt::format("tensor '{}'", entry.name);
    read_exactly(in, tensor.bytes(), entry.end - entry.begin, data_start + entry.begin,
                 what.c_str());
    tensors.emplace(entry.name, std::move(tensor));
  }
  if (metadata) *metadata = std::move(parsed_metadata);
  return tensors;
}

}  // namespace

TensorMap read_safetensors(const std::filesystem::path& path,
                           std::map<std::string, std::string>* metadata) {
  try {
    return read_file(path, metadata);
  } catch (const Error& e) {
    fail("{}: {}", path.string(), e.what());
  }
}

void write_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the reference layout: metadata first, then tensors in name order (the
  // map's order), each with dtype, shape, data_offsets. Equal inputs give byte-identical files.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name == kMetadataKey)
      fail("{}: '{}' is reserved and cannot name a tensor", path.string(), name);
    if (!tensor.defined()) fail("{}: tensor '{}' has no data", path.string(), name);
    header[name] = {{"dtype", std::string(dtype_name(tensor.dtype()))},
                    {"shape", tensor.shape()},
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
    for (const auto& [name, tensor] : tensors)
      out.write(reinterpret_cast<const char*>(tensor.bytes()),
                static_cast<std::streamsize>(tensor.nbytes()));
    out.close();
    if (!out) fail("{}: write to {} failed", path.string(), temp.string());
  });
}

}  // namespace dj
