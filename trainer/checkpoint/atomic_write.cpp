#include "trainer/checkpoint/atomic_write.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <random>
#include <string>
#include <string_view>
#include <system_error>

#include "kernels/core/error.h"

namespace dj {

namespace fs = std::filesystem;

namespace {

// `.<name>.<tag>-<pid>-<random>` beside `target`: the same directory, hence the same file system,
// so renaming it onto `target` is atomic. The pid and random part keep concurrent writers (threads,
// or ranks on several hosts sharing a file system) apart; the leading dot keeps it out of casual
// directory listings.
fs::path sibling_path(const fs::path& target, std::string_view tag) {
  std::random_device random;
  return parent_of(target) /
         fmt::format(".{}.{}-{}-{:08x}", target.filename().string(), tag, ::getpid(), random());
}

// fsync, so that a rename never publishes data still only in the page cache: after a crash the
// name would otherwise point at an empty or partial file. It goes through a fresh descriptor
// because writers use their own streams, which they have closed. Errors name `target`.
void sync_to_disk(const fs::path& path, const fs::path& target) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    fail("{}: cannot open {} to sync it: {}", target.string(), path.string(),
         std::generic_category().message(errno));
  const int status = ::fsync(fd);
  const int saved_errno = errno;
  ::close(fd);
  if (status != 0)
    fail("{}: cannot sync {}: {}", target.string(), path.string(),
         std::generic_category().message(saved_errno));
}

// Syncs the files and directories under `root`, then `root` itself. Directories need it too: their
// entries are what makes the files findable after a crash.
void sync_tree_to_disk(const fs::path& root, const fs::path& target) {
  std::error_code error;
  for (fs::recursive_directory_iterator it(root, error), end; !error && it != end;
       it.increment(error)) {
    const fs::file_status status = it->symlink_status(error);
    if (error) break;
    if (fs::is_regular_file(status) || fs::is_directory(status)) sync_to_disk(it->path(), target);
  }
  if (error) fail("{}: cannot list {}: {}", target.string(), root.string(), error.message());
  sync_to_disk(root, target);
}

void rename_into_place(const fs::path& from, const fs::path& to) {
  std::error_code error;
  fs::rename(from, to, error);
  if (error)
    fail("{}: cannot rename {} into place: {}", to.string(), from.string(), error.message());
}

// Whether a directory may be written at `dir`, which must be a directory path without a trailing
// separator; returns whether something is there that the new directory will replace.
bool check_directory_target(const fs::path& dir, const ReplacePolicy& may_replace) {
  const fs::path parent = parent_of(dir);
  std::error_code error;
  if (!fs::is_directory(parent, error))
    fail("{}: parent directory {} does not exist", dir.string(), parent.string());
  const fs::file_status status = fs::symlink_status(dir, error);
  if (status.type() == fs::file_type::not_found) return false;
  if (error) fail("{}: cannot inspect it: {}", dir.string(), error.message());
  if (!fs::is_directory(status))
    fail("{}: exists and is not a directory; refusing to replace it", dir.string());
  const bool empty = fs::is_empty(dir, error);
  if (error) fail("{}: cannot list it: {}", dir.string(), error.message());
  if (!empty && !(may_replace && may_replace(dir)))
    fail("{}: directory exists and is not empty; refusing to replace it", dir.string());
  return true;
}

// Renames `temp` to `dir`, moving the directory already at `dir` (if `replacing`) aside first so
// that it can be put back should the new one fail to go in.
void install_directory(const fs::path& temp, const fs::path& dir, bool replacing) {
  if (!replacing) {
    rename_into_place(temp, dir);
    return;
  }
  const fs::path previous = sibling_path(dir, "old");
  std::error_code error;
  fs::rename(dir, previous, error);
  if (error)
    fail("{}: cannot move the existing directory aside to {}: {}", dir.string(), previous.string(),
         error.message());
  fs::rename(temp, dir, error);
  if (error) {
    std::error_code restore_error;
    fs::rename(previous, dir, restore_error);
    if (restore_error)
      fail("{}: cannot rename {} into place ({}), nor restore the previous directory, now at {}",
           dir.string(), temp.string(), error.message(), previous.string());
    fail("{}: cannot rename {} into place: {}", dir.string(), temp.string(), error.message());
  }
  // The new directory is in place, so failing now would misreport the write; a leftover copy only
  // costs disk space.
  fs::remove_all(previous, error);
  if (error)
    spdlog::warn("{}: cannot remove the previous directory at {}: {}", dir.string(),
                 previous.string(), error.message());
}

}  // namespace

void write_file_atomically(const fs::path& path, const AtomicWriter& writer) {
  if (!path.has_filename()) fail("{}: not a file path", path.string());
  const fs::path temp = sibling_path(path, "tmp");
  try {
    writer(temp);
    if (!fs::is_regular_file(temp))
      fail("{}: the writer did not create the temporary file {}", path.string(), temp.string());
    sync_to_disk(temp, path);
    rename_into_place(temp, path);
  } catch (...) {
    std::error_code ignored;
    fs::remove(temp, ignored);
    throw;
  }
  // The rename is durable only once the directory entry is on disk.
  sync_to_disk(parent_of(path), path);
}

void write_text_atomically(const fs::path& path, std::string_view text) {
  write_file_atomically(path, [&](const fs::path& temp) {
    std::ofstream out(temp, std::ios::binary);
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    out.close();
    if (!out) fail("{}: write failed", path.string());
  });
}

void write_directory_atomically(const fs::path& dir_path, const ReplacePolicy& may_replace,
                                const AtomicWriter& writer) {
  // Without the trailing separator, so that the temporary sibling is not created inside `dir`.
  const fs::path dir = dir_path.has_filename() ? dir_path : dir_path.parent_path();
  // Decided before writing: a refusal should not cost the work of producing the content.
  const bool replacing = check_directory_target(dir, may_replace);

  const fs::path temp = sibling_path(dir, "tmp");
  std::error_code error;
  if (!fs::create_directory(temp, error))
    fail("{}: cannot create {}: {}", dir.string(), temp.string(),
         error ? error.message() : "it already exists");
  try {
    writer(temp);
    sync_tree_to_disk(temp, dir);
    install_directory(temp, dir, replacing);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(temp, ignored);
    throw;
  }
  // The renames are durable only once the parent's entries are on disk.
  sync_to_disk(parent_of(dir), dir);
}

}  // namespace dj
