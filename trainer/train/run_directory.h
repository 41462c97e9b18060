// The checkpoints of a run directory (checkpoint.dir): their names, which is newest, which one
// `--resume` takes, and pruning to checkpoint.keep.
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace dj {

// ckpt-<step>.h5 (step in eight digits) written by one process (`one_file`), ckpt-<step>/ (a flat
// checkpoint, one file per rank) by several.
std::filesystem::path checkpoint_path(const std::filesystem::path& dir, int64_t step, bool one_file);

// The checkpoints of a run directory, newest first (none if it does not exist).
std::vector<std::filesystem::path> checkpoints_newest_first(const std::filesystem::path& dir);

// The newest checkpoint in a run directory (empty if there is none).
std::filesystem::path latest_checkpoint(const std::filesystem::path& dir);

// The checkpoint `--resume` continues from: the newest one in `dir` whose files are complete
// and match their checksums (verify_checkpoint). Each damaged one passed over is logged as a
// warning with the reason; if there are checkpoints but none is intact, throws dj::Error rather
// than starting over. Empty if the directory holds no checkpoint.
std::filesystem::path resume_checkpoint(const std::filesystem::path& dir);

// Removes all but the `keep` newest checkpoints.
void prune_checkpoints(const std::filesystem::path& dir, int64_t keep);

}  // namespace dj
