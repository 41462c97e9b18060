// Verifying checkpoints without loading them: the files a checkpoint consists of (a native file, a
// native directory's shards, a flat checkpoint's rank files), each checked against its checksum
// (checksum.h). Used by `dijiang inspect --verify` and by `train --resume`, which skips a damaged
// newest checkpoint for the newest intact one.
#pragma once
#include <filesystem>
#include <vector>

#include "trainer/checkpoint/checksum.h"

namespace dj {

struct VerifiedFile {
  std::filesystem::path path;
  FileChecksum checksum;
};

// Checks that the checkpoint at `path` is complete (its marker and every file it names are
// present) and that every file's bytes match its checksum; returns the files. Throws dj::Error
// naming the first file (or directory) that fails. Parses no HDF5.
std::vector<VerifiedFile> verify_checkpoint(const std::filesystem::path& path);

// Whether `path` is a checkpoint (native file or directory, flat directory), complete or not.
bool is_checkpoint(const std::filesystem::path& path);

}  // namespace dj
