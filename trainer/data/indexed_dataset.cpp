// Megatron / GPT-NeoX "MMIDIDX" indexed datasets (docs/pythia.md, section 4). The
// writer reproduces GPT-NeoX megatron/data/indexed_dataset.py (MMapIndexedDataset.Index.writer and
// MMapIndexedDatasetBuilder) byte for byte; the reader validates everything that file trusts.
#include "trainer/data/indexed_dataset.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <utility>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"

namespace dj {

// The format is little-endian and the arrays are read with memcpy, so the host must be too.
static_assert(std::endian::native == std::endian::little, "indexed datasets assume a little-endian host");

namespace {

constexpr char kMagic[9] = {'M', 'M', 'I', 'D', 'I', 'D', 'X', '\0', '\0'};
// magic, u64 version, u8 dtype code, u64 sequence count, u64 doc_idx count.
constexpr size_t kHeaderBytes = 9 + 8 + 1 + 8 + 8;
constexpr uint8_t kCodeI32 = 4, kCodeU16 = 8;

// Bytes per token of a dtype code, or 0 for a code that is not an integer token type.
size_t itemsize(uint8_t code) {
  switch (code) {
    case 1: case 2: return 1;    // u8, i8
    case 3: case 8: return 2;    // i16, u16
    case 4: return 4;            // i32
    case 5: return 8;            // i64
    default: return 0;
  }
}

template <typename T>
T load(const uint8_t* p) {
  T value;
  std::memcpy(&value, p, sizeof value);  // the arrays may be unaligned
  return value;
}

template <typename T>
void store(std::vector<uint8_t>& out, T value) {
  const size_t at = out.size();
  out.resize(at + sizeof value);
  std::memcpy(out.data() + at, &value, sizeof value);
}

// A whole file mapped read-only, unmapped on destruction. An empty file maps to nothing.
class MappedFile {
 public:
  explicit MappedFile(std::string path) : path_(std::move(path)) {
    const int fd = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("cannot open {}: {}", path_, std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      fail("cannot stat {}: {}", path_, std::strerror(err));
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* data = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (data == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        fail("cannot map {}: {}", path_, std::strerror(err));
      }
      data_ = static_cast<const uint8_t*>(data);
    }
    ::close(fd);  // the mapping keeps the file's contents reachable
  }
  ~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  MappedFile(MappedFile&& other) noexcept
      : path_(std::move(other.path_)), data_(std::exchange(other.data_, nullptr)), size_(other.size_) {}
  MappedFile& operator=(MappedFile&&) = delete;

  const std::string& path() const { return path_; }
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// One PREFIX.idx / PREFIX.bin pair, validated.
struct Shard {
  MappedFile idx, bin;
  uint8_t code = 0;
  int64_t count = 0;
  std::vector<int64_t> doc_idx;

  int32_t size(int64_t i) const { return load<int32_t>(idx.data() + kHeaderBytes + 4 * static_cast<size_t>(i)); }
  int64_t pointer(int64_t i) const {
    return load<int64_t>(idx.data() + kHeaderBytes + 4 * static_cast<size_t>(count) + 8 * static_cast<size_t>(i));
  }
};

Shard open_shard(const std::string& prefix) {
  MappedFile idx(prefix + ".idx");
  const std::string& name = idx.path();
  const uint8_t* p = idx.data();
  if (idx.size() < kHeaderBytes) fail("{}: truncated index ({} bytes; the header alone is {})", name, idx.size(), kHeaderBytes);
  if (std::memcmp(p, kMagic, sizeof kMagic) != 0) fail("{}: not a Megatron indexed dataset index (wrong magic)", name);
  const uint64_t version = load<uint64_t>(p + 9);
  if (version != 1) fail("{}: unsupported index version {} (only 1 is known)", name, version);
  const uint8_t code = p[17];
  if (code == 6 || code == 7) fail("{}: dtype code {} is a float type, not token ids", name, code);
  if (itemsize(code) == 0) fail("{}: unknown dtype code {}", name, code);
  const uint64_t n = load<uint64_t>(p + 18), d = load<uint64_t>(p + 26);
  // Bounding n and d by the file size first keeps the expected size from overflowing.
  const uint64_t room = idx.size() - kHeaderBytes;
  if (n > room / 12 || d > room / 8 || 12 * n + 8 * d != room) {
    fail("{}: its {} bytes do not match its header ({} sequences, {} doc_idx entries): truncated or corrupt", name,
         idx.size(), n, d);
  }

  Shard shard{std::move(idx), MappedFile(prefix + ".bin"), code, static_cast<int64_t>(n), {}};
  const std::string& bin_name = shard.bin.path();
  const uint64_t bin_size = shard.bin.size(), item = itemsize(code);
  for (int64_t i = 0; i < shard.count; ++i) {
    const int32_t size = shard.size(i);
    const int64_t pointer = shard.pointer(i);
    if (size < 0) fail("{}: sequence {} has negative size {}", shard.idx.path(), i, size);
    // Sizes are int32, so size * item < 2^35 and the sum cannot overflow once pointer <= bin_size.
    if (pointer < 0 || static_cast<uint64_t>(pointer) > bin_size ||
        static_cast<uint64_t>(size) * item > bin_size - static_cast<uint64_t>(pointer)) {
      fail("{}: sequence {} ({} tokens at byte {}, from {}) lies beyond the end of the file ({} bytes; truncated?)",
           bin_name, i, size, pointer, shard.idx.path(), bin_size);
    }
  }

  const uint8_t* doc = shard.idx.data() + kHeaderBytes + 12 * n;
  shard.doc_idx.resize(d);
  for (uint64_t j = 0; j < d; ++j) shard.doc_idx[j] = load<int64_t>(doc + 8 * j);
  const bool monotone = std::is_sorted(shard.doc_idx.begin(), shard.doc_idx.end());
  if (d == 0 || shard.doc_idx.front() != 0 || shard.doc_idx.back() != shard.count || !monotone) {
    fail("{}: doc_idx does not rise monotonically from 0 to the sequence count {}", shard.idx.path(), shard.count);
  }
  return shard;
}

template <typename T>
void widen(const uint8_t* p, int64_t length, const std::string& file, std::vector<int32_t>& out) {
  for (int64_t k = 0; k < length; ++k) {
    const T value = load<T>(p + sizeof(T) * static_cast<size_t>(k));
    if constexpr (sizeof(T) == 8) {
      if (value < std::numeric_limits<int32_t>::min() || value > std::numeric_limits<int32_t>::max()) {
        fail("{}: token {} does not fit in int32", file, value);
      }
    }
    out.push_back(static_cast<int32_t>(value));
  }
}

// Writes `bytes` to `path`, throwing dj::Error on failure (used inside write_file_atomically).
void write_bytes(const std::filesystem::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) fail("cannot write {}", path.string());
}

}  // namespace

struct IndexedDataset::Impl {
  std::vector<Shard> shards;
  std::vector<int64_t> first;  // first[k]: global index of shard k's first sequence; back() = total
  std::vector<int64_t> doc_idx;
  int64_t total_tokens = 0;

  // The shard holding global sequence i and i's index within it.
  std::pair<const Shard*, int64_t> locate(int64_t i) const {
    if (i < 0 || i >= first.back()) fail("sequence {} is out of range (the dataset has {})", i, first.back());
    const size_t k = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), i) - first.begin()) - 1;
    return {&shards[k], i - first[k]};
  }
};

IndexedDataset::IndexedDataset(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
IndexedDataset::~IndexedDataset() = default;
IndexedDataset::IndexedDataset(IndexedDataset&&) noexcept = default;
IndexedDataset& IndexedDataset::operator=(IndexedDataset&&) noexcept = default;

IndexedDataset IndexedDataset::open(const std::string& prefix) { return open_shards({prefix}); }

IndexedDataset IndexedDataset::open_shards(const std::vector<std::string>& prefixes) {
  if (prefixes.empty()) fail("no indexed dataset given");
  auto impl = std::make_unique<Impl>();
  impl->first.push_back(0);
  impl->doc_idx.push_back(0);
  for (const std::string& prefix : prefixes) {
    Shard shard = open_shard(prefix);
    if (!impl->shards.empty() && shard.code != impl->shards.front().code) {
      fail("{}: dtype code {} differs from code {} of {}", shard.idx.path(), shard.code, impl->shards.front().code,
           impl->shards.front().idx.path());
    }
    // As Megatron's MMapIndexedDatasetBuilder.merge_file_ joins indices: each shard's doc_idx after
    // its leading 0, offset by the sequences before it.
    const int64_t offset = impl->first.back();
    for (size_t j = 1; j < shard.doc_idx.size(); ++j) impl->doc_idx.push_back(offset + shard.doc_idx[j]);
    for (int64_t i = 0; i < shard.count; ++i) impl->total_tokens += shard.size(i);
    impl->first.push_back(offset + shard.count);
    impl->shards.push_back(std::move(shard));
  }
  return IndexedDataset(std::move(impl));
}

int64_t IndexedDataset::sequences() const { return impl_->first.back(); }

int64_t IndexedDataset::sequence_length(int64_t i) const {
  const auto [shard, local] = impl_->locate(i);
  return shard->size(local);
}

std::vector<int32_t> IndexedDataset::sequence(int64_t i) const { return tokens(i, 0, sequence_length(i)); }

std::vector<int32_t> IndexedDataset::tokens(int64_t i, int64_t offset, int64_t length) const {
  const auto [shard, local] = impl_->locate(i);
  const int64_t size = shard->size(local);
  if (offset < 0 || length < 0 || offset > size || length > size - offset) {
    fail("tokens [{}, {}) are out of range of sequence {} ({} tokens)", offset, offset + length, i, size);
  }
  const uint8_t* p = shard->bin.data() + shard->pointer(local) + offset * static_cast<int64_t>(itemsize(shard->code));
  const std::string& file = shard->bin.path();
  std::vector<int32_t> out;
  out.reserve(static_cast<size_t>(length));
  switch (shard->code) {
    case 1: widen<uint8_t>(p, length, file, out); break;
    case 2: widen<int8_t>(p, length, file, out); break;
    case 3: widen<int16_t>(p, length, file, out); break;
    case 4: widen<int32_t>(p, length, file, out); break;
    case 5: widen<int64_t>(p, length, file, out); break;
    default: widen<uint16_t>(p, length, file, out); break;  // code 8; open_shard rejected the rest
  }
  return out;
}

const std::vector<int64_t>& IndexedDataset::document_index() const { return impl_->doc_idx; }

int64_t IndexedDataset::total_tokens() const { return impl_->total_tokens; }

std::vector<int32_t> read_all_tokens(const std::vector<std::string>& prefixes) {
  const IndexedDataset dataset = IndexedDataset::open_shards(prefixes);
  std::vector<int32_t> all;
  all.reserve(static_cast<size_t>(dataset.total_tokens()));
  for (int64_t i = 0; i < dataset.sequences(); ++i) {
    const std::vector<int32_t> seq = dataset.sequence(i);
    all.insert(all.end(), seq.begin(), seq.end());
  }
  return all;
}

IndexedDatasetWriter::IndexedDatasetWriter(std::string prefix, bool u16) : prefix_(std::move(prefix)), u16_(u16) {}

void IndexedDatasetWriter::add_document(const std::vector<int32_t>& tokens) {
  if (finished_) fail("{}: add_document after finish", prefix_);
  if (tokens.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail("{}: a document of {} tokens is too long for the index's int32 sizes", prefix_, tokens.size());
  }
  const int32_t max_id = u16_ ? std::numeric_limits<uint16_t>::max() : std::numeric_limits<int32_t>::max();
  for (const int32_t id : tokens) {
    if (id < 0 || id > max_id) fail("{}: token id {} does not fit the dataset's {} dtype", prefix_, id, u16_ ? "u16" : "i32");
  }
  // Checked before appending, so a rejected document leaves the writer unchanged.
  for (const int32_t id : tokens) {
    if (u16_) {
      store(data_, static_cast<uint16_t>(id));
    } else {
      store(data_, id);
    }
  }
  sizes_.push_back(static_cast<int32_t>(tokens.size()));
}

void IndexedDatasetWriter::finish() {
  if (finished_) fail("{}: finish called twice", prefix_);
  // GPT-NeoX Index.writer: magic, <Q version 1, <B dtype code, <Q len(sizes), <Q len(doc_idx), then
  // sizes as int32, pointers (running byte offsets, size * itemsize) as int64 and doc_idx as int64.
  // MMapIndexedDatasetBuilder starts doc_idx at [0] and end_document appends len(sizes), so one
  // document per sequence gives [0, 1, ..., N].
  const uint64_t n = sizes_.size();
  const int64_t item = u16_ ? 2 : 4;
  std::vector<uint8_t> index;
  index.reserve(kHeaderBytes + 12 * n + 8 * (n + 1));
  for (const char c : kMagic) store(index, c);
  store<uint64_t>(index, 1);
  store<uint8_t>(index, u16_ ? kCodeU16 : kCodeI32);
  store<uint64_t>(index, n);
  store<uint64_t>(index, n + 1);
  for (const int32_t size : sizes_) store(index, size);
  int64_t address = 0;
  for (const int32_t size : sizes_) {
    store(index, address);
    address += size * item;
  }
  for (uint64_t j = 0; j <= n; ++j) store(index, static_cast<int64_t>(j));

  // The data first and the index last, so an index is never visible without its data.
  write_file_atomically(prefix_ + ".bin", [&](const std::filesystem::path& temp) { write_bytes(temp, data_); });
  write_file_atomically(prefix_ + ".idx", [&](const std::filesystem::path& temp) { write_bytes(temp, index); });
  finished_ = true;
}

}  // namespace dj
