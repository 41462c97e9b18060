// Atomic replacement of files and directories: new content is written under a temporary name
// beside its destination, flushed to disk and renamed into place, so readers (and a restart after
// a crash) see either the old content or the complete new one, never a partial write.
#pragma once
#include <filesystem>
#include <functional>
#include <string_view>

namespace dj {

// Writes the new content at the temporary path it is given.
// `path` without a trailing separator ("runs/x/" -> "runs/x").
inline std::filesystem::path without_trailing_separator(const std::filesystem::path& path) {
  return path.has_filename() ? path : path.parent_path();
}
// The directory `path` is in ("." for a bare name).
inline std::filesystem::path parent_of(const std::filesystem::path& path) {
  return path.has_parent_path() ? path.parent_path() : std::filesystem::path(".");
}

using AtomicWriter = std::function<void(const std::filesystem::path& temp)>;

// Calls `writer` with a temporary path in the same directory as `path` (so the final rename stays
// on one file system), flushes the written file to disk, renames it over `path` and syncs the
// directory. If `writer` throws or any step fails, the temporary file is removed, `path` is left
// as it was, and the exception propagates (failures of the steps here throw dj::Error naming
// `path`). `writer` must create the file and close it before returning.
void write_file_atomically(const std::filesystem::path& path, const AtomicWriter& writer);

// The same for a file whose whole content is `text` (reports, JSON).
void write_text_atomically(const std::filesystem::path& path, std::string_view text);

// Whether the existing, non-empty directory `existing` may be replaced. Instead of returning false
// it may throw a dj::Error of its own, to say how to allow it (e.g. "pass --force").
using ReplacePolicy = std::function<bool(const std::filesystem::path& existing)>;

// Calls `writer` with a new empty directory beside `dir` ("out/" names the directory "out"),
// flushes to disk every file and directory the writer left in it and the directory itself, and
// renames it to `dir`; then syncs the parent directory.
//
// A missing or empty `dir` is always replaced. An existing non-empty directory is replaced only if
// `may_replace` allows it (a null policy never does); anything else at `dir`, a symbolic link
// included, is refused. All of this is decided before `writer` runs. A directory being replaced is
// renamed aside first and removed only once the new one is in place, so a complete directory is at
// `dir` throughout; it is renamed back if the new one cannot be installed, and a failure to remove
// it afterwards is only logged as a warning, since by then the write has succeeded.
//
// If `writer` throws or any step fails, the temporary directory is removed, `dir` is left as it
// was, and the exception propagates (failures of the steps here throw dj::Error naming `dir`).
void write_directory_atomically(const std::filesystem::path& dir, const ReplacePolicy& may_replace,
                                const AtomicWriter& writer);

}  // namespace dj
