#include "trainer/train/run_directory.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <functional>
#include <regex>
#include <string>
#include <system_error>

#include "kernels/core/error.h"
#include "trainer/checkpoint/verify.h"

namespace dj {

namespace fs = std::filesystem;

fs::path checkpoint_path(const fs::path& dir, int64_t step, bool one_file) {
  return dir / (one_file ? fmt::format("ckpt-{:08d}.h5", step) : fmt::format("ckpt-{:08d}", step));
}

std::vector<fs::path> checkpoints_newest_first(const fs::path& dir) {
  static const std::regex kCheckpointName(R"(ckpt-(\d{8})(\.h5)?)");
  std::vector<fs::path> found;
  std::error_code error;
  if (!fs::is_directory(dir, error)) return found;
  for (const auto& entry : fs::directory_iterator(dir, error))
    if (std::regex_match(entry.path().filename().string(), kCheckpointName)) found.push_back(entry.path());
  std::sort(found.begin(), found.end(), std::greater<>());
  return found;
}

fs::path latest_checkpoint(const fs::path& dir) {
  const std::vector<fs::path> found = checkpoints_newest_first(dir);
  return found.empty() ? fs::path() : found.front();
}

fs::path resume_checkpoint(const fs::path& dir) {
  const std::vector<fs::path> found = checkpoints_newest_first(dir);
  std::string newest_reason;
  for (const fs::path& candidate : found) {
    try {
      verify_checkpoint(candidate);
      return candidate;
    } catch (const Error& e) {
      spdlog::warn("--resume: passing over a damaged checkpoint: {}", e.what());
      if (newest_reason.empty()) newest_reason = e.what();
    }
  }
  if (!found.empty())
    fail("--resume: none of the {} checkpoints in {} is intact (the newest: {})", found.size(), dir.string(),
         newest_reason);
  return {};
}

void prune_checkpoints(const fs::path& dir, int64_t keep) {
  const std::vector<fs::path> found = checkpoints_newest_first(dir);
  for (size_t i = static_cast<size_t>(std::max<int64_t>(keep, 0)); i < found.size(); ++i) fs::remove_all(found[i]);
}

}  // namespace dj
