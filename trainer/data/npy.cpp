#include "trainer/data/npy.h"

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"

namespace dj {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr uint64_t kMaxHeader = 1 << 20;

struct Header {
  char kind = 0;  // 'u' or 'i'
  int size = 0;   // bytes per element
  int64_t length = 0;
};

Header parse_header(const std::string& text, const std::string& file) {
  // The header is a Python dict literal: {'descr': '<u2', 'fortran_order': False, 'shape': (N,), }
  static const std::regex descr_re(R"('descr'\s*:\s*'([<>|=])([a-zA-Z])(\d+)')");
  static const std::regex fortran_re(R"('fortran_order'\s*:\s*(True|False))");
  static const std::regex shape_re(R"('shape'\s*:\s*\(([^)]*)\))");
  std::smatch m;
  if (!std::regex_search(text, m, descr_re)) fail("{}: .npy header has no readable 'descr'", file);
  const char order = m[1].str()[0];
  Header h;
  h.kind = m[2].str()[0];
  // Any run of digits matches: a size that does not fit an int is no integer dtype either.
  const std::string digits = m[3].str();
  if (std::from_chars(digits.data(), digits.data() + digits.size(), h.size).ec != std::errc())
    h.size = 0;
  const bool multibyte = h.size > 1;
  if (order == '>' && multibyte) fail("{}: big-endian .npy arrays are not supported", file);
  if ((h.kind != 'u' && h.kind != 'i') || (h.size != 1 && h.size != 2 && h.size != 4 && h.size != 8))
    fail("{}: .npy dtype '{}' is not an integer type (token ids must be u1/u2/u4/u8/i1/i2/i4/i8)",
         file, m[1].str() + m[2].str() + m[3].str());
  if (!std::regex_search(text, m, fortran_re)) fail("{}: .npy header has no 'fortran_order'", file);
  if (!std::regex_search(text, m, shape_re)) fail("{}: .npy header has no 'shape'", file);
  std::vector<int64_t> dims;
  std::string shape = m[1].str();
  std::replace(shape.begin(), shape.end(), ',', ' ');
  std::istringstream in(shape);
  std::string token;
  while (in >> token) {
    if (token.find_first_not_of("0123456789") != std::string::npos || token.size() > 15)
      fail("{}: .npy shape entry '{}' is not a dimension", file, token);
    dims.push_back(std::stoll(token));
  }
  if (dims.size() != 1)
    fail("{}: token arrays must be 1-D, this one has shape ({})", file, m[1].str());
  h.length = dims[0];
  return h;
}

}  // namespace

std::vector<int32_t> read_npy_tokens(const std::filesystem::path& path) {
  const std::string file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot open", file);
  char preamble[8];
  if (!in.read(preamble, 8) || std::memcmp(preamble, kMagic, 6) != 0)
    fail("{}: not a .npy file (bad magic)", file);
  const int major = static_cast<unsigned char>(preamble[6]);
  uint64_t header_length = 0;
  if (major == 1) {
    unsigned char b[2];
    if (!in.read(reinterpret_cast<char*>(b), 2)) fail("{}: truncated .npy header", file);
    header_length = b[0] | (b[1] << 8);
  } else if (major == 2 || major == 3) {
    unsigned char b[4];
    if (!in.read(reinterpret_cast<char*>(b), 4)) fail("{}: truncated .npy header", file);
    header_length = b[0] | (b[1] << 8) | (b[2] << 16) | (static_cast<uint64_t>(b[3]) << 24);
  } else {
    fail("{}: .npy format version {} is not supported", file, major);
  }
  if (header_length > kMaxHeader) fail("{}: .npy header length {} is implausible", file, header_length);
  std::string text(header_length, '\0');
  if (!in.read(text.data(), static_cast<std::streamsize>(header_length))) fail("{}: truncated .npy header", file);
  const Header h = parse_header(text, file);

  const uint64_t bytes = static_cast<uint64_t>(h.length) * static_cast<uint64_t>(h.size);
  // Checked against the file before anything is allocated: a header can promise any length.
  std::error_code error;
  const uint64_t file_bytes = std::filesystem::file_size(path, error);
  const auto data_start = static_cast<uint64_t>(in.tellg());
  if (error || file_bytes < data_start || file_bytes - data_start < bytes)
    fail("{}: truncated: the header promises {} elements ({} bytes)", file, h.length, bytes);
  std::vector<unsigned char> raw(bytes);
  if (!in.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(bytes)))
    fail("{}: truncated: the header promises {} elements ({} bytes)", file, h.length, bytes);
  std::vector<int32_t> ids(static_cast<size_t>(h.length));
  for (int64_t i = 0; i < h.length; ++i) {
    uint64_t u = 0;
    for (int b = 0; b < h.size; ++b) u |= static_cast<uint64_t>(raw[static_cast<size_t>(i * h.size + b)]) << (8 * b);
    int64_t value = static_cast<int64_t>(u);
    if (h.kind == 'i' && h.size < 8 && (u >> (8 * h.size - 1)) & 1) value -= int64_t(1) << (8 * h.size);
    if (value < 0 || value > INT32_MAX) fail("{}: token {} at index {} is out of range", file, value, i);
    ids[static_cast<size_t>(i)] = static_cast<int32_t>(value);
  }
  return ids;
}

void write_npy_tokens(const std::filesystem::path& path, const std::vector<int32_t>& ids) {
  const std::string file = path.string();
  if (const auto it = std::find_if(ids.begin(), ids.end(), [](int32_t id) { return id < 0; }); it != ids.end())
    fail("{}: cannot write negative token id {} at index {}", file, *it, it - ids.begin());
  const bool narrow = std::all_of(ids.begin(), ids.end(), [](int32_t id) { return id < 65536; });
  const int size = narrow ? 2 : 4;
  std::string header = "{'descr': '" + std::string(narrow ? "<u2" : "<i4") +
                       "', 'fortran_order': False, 'shape': (" + std::to_string(ids.size()) + ",), }";
  // The 10-byte preamble, the header and its closing newline fill a multiple of 64 bytes.
  header.append((64 - (10 + header.size() + 1) % 64) % 64, ' ');
  header += '\n';
  std::string data(ids.size() * static_cast<size_t>(size), '\0');
  for (size_t i = 0; i < ids.size(); ++i) {
    const auto value = static_cast<uint32_t>(ids[i]);
    for (int b = 0; b < size; ++b) data[i * static_cast<size_t>(size) + static_cast<size_t>(b)] = static_cast<char>(value >> (8 * b));
  }
  write_file_atomically(path, [&](const std::filesystem::path& temp) {
    std::ofstream out(temp, std::ios::binary);
    out.write(kMagic, 6);
    const char version_and_length[4] = {1, 0, static_cast<char>(header.size() & 0xFF), static_cast<char>(header.size() >> 8)};
    out.write(version_and_length, 4);
    out << header << data;
    out.close();
    if (!out) fail("{}: write failed", file);
  });
}

}  // namespace dj
