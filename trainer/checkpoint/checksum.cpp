#include "trainer/checkpoint/checksum.h"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string_view>
#include <system_error>
#include <tuple>
#include <vector>

#include <fmt/format.h>

#include "kernels/core/error.h"

namespace dj {
namespace {

namespace fs = std::filesystem;

constexpr std::string_view kMagic = "dijiang-checksum 1\n";
constexpr std::string_view kAlgorithm = "xxh3-128 ";
constexpr std::array<char, 8> kHdf5Signature = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
constexpr size_t kReadBytes = size_t{8} << 20;

std::string error_text(int error) { return std::generic_category().message(error); }

// A file descriptor closed when destroyed.
class Descriptor {
 public:
  Descriptor(const fs::path& path, int flags) : fd_(::open(path.c_str(), flags | O_CLOEXEC)) {}
  ~Descriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Reads up to `count` bytes at `offset`, retrying short reads; returns how many were read (fewer
// only at the end of the file).
size_t read_at(int fd, char* out, size_t count, uint64_t offset, const fs::path& path) {
  size_t done = 0;
  while (done < count) {
    const ssize_t n = ::pread(fd, out + done, count - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("{}: cannot read it: {}", path.string(), error_text(errno));
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

// XXH3-128 of the bytes of `fd` from `offset` to the end; `bytes` receives their count.
std::string digest_from(int fd, uint64_t offset, uint64_t& bytes, const fs::path& path) {
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state(XXH3_createState(), XXH3_freeState);
  if (!state || XXH3_128bits_reset(state.get()) != XXH_OK)
    fail("{}: cannot start a checksum (out of memory)", path.string());
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
  std::vector<char> buffer(kReadBytes);
  bytes = 0;
  for (;;) {
    const size_t n = read_at(fd, buffer.data(), buffer.size(), offset + bytes, path);
    if (n == 0) break;
    XXH3_128bits_update(state.get(), buffer.data(), n);
    bytes += n;
  }
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, XXH3_128bits_digest(state.get()));
  std::string hex;
  for (const unsigned char byte : canonical.digest) hex += fmt::format("{:02x}", byte);
  return hex;
}

// The block a sealed file starts with.
std::array<char, kChecksumBlockBytes> header_block(const std::string& digest, uint64_t bytes) {
  std::array<char, kChecksumBlockBytes> block{};
  const std::string text = fmt::format("{}{}{}\nbytes {}\n", kMagic, kAlgorithm, digest, bytes);
  std::memcpy(block.data(), text.data(), text.size());
  return block;
}

// Parses a block written by header_block, or returns nothing if it is not exactly such a block.
std::optional<FileChecksum> parse_header(const std::array<char, kChecksumBlockBytes>& block) {
  std::string_view text(block.data(), block.size());
  text = text.substr(0, text.find('\0'));
  if (!text.starts_with(kMagic)) return std::nullopt;
  text.remove_prefix(kMagic.size());
  if (!text.starts_with(kAlgorithm)) return std::nullopt;
  text.remove_prefix(kAlgorithm.size());
  if (text.size() < 33 || text[32] != '\n') return std::nullopt;
  FileChecksum checksum;
  checksum.sealed = true;
  checksum.digest = std::string(text.substr(0, 32));
  for (const char c : checksum.digest)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
  text.remove_prefix(33);
  if (!text.starts_with("bytes ") || !text.ends_with('\n')) return std::nullopt;
  text = text.substr(6, text.size() - 7);
  const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), checksum.bytes);
  if (error != std::errc() || end != text.data() + text.size()) return std::nullopt;
  // Anything else in the block (other digits, padding that is not zero) is damage too.
  if (header_block(checksum.digest, checksum.bytes) != block) return std::nullopt;
  return checksum;
}

// Files verified in this process, by identity and state: a second check of an unchanged file
// (every rank file is opened when a checkpoint is listed and again when it is read) is free.
// (The change time is left out: renaming a file into place changes it.)
using FileKey = std::tuple<dev_t, ino_t, off_t, int64_t, int64_t>;

FileKey key_of(const struct stat& s) {
  return {s.st_dev, s.st_ino, s.st_size, s.st_mtim.tv_sec, s.st_mtim.tv_nsec};
}

struct Verified {
  std::mutex mutex;
  std::map<FileKey, FileChecksum> files;
  std::set<std::string> warned;  // unsealed files already warned about
};

Verified& verified() {
  static Verified state;
  return state;
}

}  // namespace

FileChecksum seal_checkpoint_file(const fs::path& path) {
  const Descriptor file(path, O_RDWR);
  if (file.get() < 0) fail("{}: cannot open it to write its checksum: {}", path.string(), error_text(errno));
  std::array<char, kChecksumBlockBytes> block{};
  if (read_at(file.get(), block.data(), block.size(), 0, path) != block.size() ||
      (std::any_of(block.begin(), block.end(), [](char c) { return c != 0; }) && !parse_header(block)))
    fail("{}: has no {}-byte block for its checksum (neither empty nor a checksum header)", path.string(),
         kChecksumBlockBytes);
  FileChecksum checksum;
  checksum.sealed = true;
  uint64_t data_bytes = 0;
  checksum.digest = digest_from(file.get(), kChecksumBlockBytes, data_bytes, path);
  checksum.bytes = kChecksumBlockBytes + data_bytes;
  block = header_block(checksum.digest, checksum.bytes);
  size_t done = 0;
  while (done < block.size()) {
    const ssize_t n = ::pwrite(file.get(), block.data() + done, block.size() - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("{}: cannot write its checksum: {}", path.string(), error_text(n < 0 ? errno : EIO));
    done += static_cast<size_t>(n);
  }
  // The bytes just hashed are the file's: a later check in this process need not read them again.
  struct stat status {};
  if (::fstat(file.get(), &status) == 0) {
    Verified& cache = verified();
    const std::lock_guard lock(cache.mutex);
    cache.files.insert_or_assign(key_of(status), checksum);
  }
  return checksum;
}

FileChecksum verify_checkpoint_file(const fs::path& path, ChecksumCheck check) {
  const Descriptor file(path, O_RDONLY);
  if (file.get() < 0) fail("{}: cannot open it: {}", path.string(), error_text(errno));
  struct stat status {};
  if (::fstat(file.get(), &status) != 0) fail("{}: cannot inspect it: {}", path.string(), error_text(errno));
  if (!S_ISREG(status.st_mode)) fail("{}: not a regular file", path.string());
  const FileKey key = key_of(status);
  Verified& cache = verified();
  {
    const std::lock_guard lock(cache.mutex);
    if (const auto it = cache.files.find(key); it != cache.files.end()) return it->second;
  }

  std::array<char, kChecksumBlockBytes> block{};
  const size_t head = read_at(file.get(), block.data(), block.size(), 0, path);
  FileChecksum checksum;
  if (head >= kHdf5Signature.size() && std::equal(kHdf5Signature.begin(), kHdf5Signature.end(), block.begin())) {
    checksum.bytes = static_cast<uint64_t>(status.st_size);
    const std::lock_guard lock(cache.mutex);
    if (cache.warned.insert(path.string()).second)
      spdlog::warn("{}: has no checksum (written by an older version or another program); its bytes are not verified",
                   path.string());
    cache.files.emplace(key, checksum);
    return checksum;
  }
  if (head == 0) fail("{}: is empty", path.string());
  if (!std::string_view(block.data(), std::min(head, kMagic.size())).starts_with(kMagic.substr(0, 8)))
    fail("{}: not a checkpoint file (neither a checksum header nor the HDF5 signature at its start)", path.string());
  const std::optional<FileChecksum> recorded = head == block.size() ? parse_header(block) : std::nullopt;
  if (!recorded)
    fail("{}: its checksum header is damaged: the file changed after it was written", path.string());
  if (static_cast<uint64_t>(status.st_size) != recorded->bytes)
    fail("{}: holds {} bytes where its checksum covers {}: the file is {} (an interrupted copy?)", path.string(),
         status.st_size, recorded->bytes,
         static_cast<uint64_t>(status.st_size) < recorded->bytes ? "truncated" : "longer than written");
  if (check == ChecksumCheck::header) return *recorded;
  uint64_t data_bytes = 0;
  const std::string digest = digest_from(file.get(), kChecksumBlockBytes, data_bytes, path);
  if (data_bytes + kChecksumBlockBytes != recorded->bytes)
    fail("{}: changed while it was being verified", path.string());
  if (digest != recorded->digest)
    fail("{}: checksum mismatch (xxh3-128 {} where {} was written): the file's bytes changed after it was written",
         path.string(), digest, recorded->digest);
  const std::lock_guard lock(cache.mutex);
  cache.files.emplace(key, *recorded);
  return *recorded;
}

bool looks_like_checkpoint_file(const fs::path& path) {
  std::error_code error;
  if (!fs::is_regular_file(path, error)) return false;
  const Descriptor file(path, O_RDONLY);
  if (file.get() < 0) return false;
  std::array<char, 16> head{};
  const ssize_t n = ::pread(file.get(), head.data(), head.size(), 0);
  if (n < static_cast<ssize_t>(kHdf5Signature.size())) return false;
  const std::string_view text(head.data(), static_cast<size_t>(n));
  return std::equal(kHdf5Signature.begin(), kHdf5Signature.end(), head.begin()) ||
         text == kMagic.substr(0, head.size());
}

}  // namespace dj
