#include "trainer/checkpoint/verify.h"

#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/native.h"

namespace dj {

std::vector<VerifiedFile> verify_checkpoint(const std::filesystem::path& path) {
  const std::vector<std::filesystem::path> files =
      is_flat_checkpoint(path) ? flat_checkpoint_files(path) : native_checkpoint_files(path);
  std::vector<VerifiedFile> verified;
  for (const auto& file : files) verified.push_back({file, verify_checkpoint_file(file)});
  return verified;
}

bool is_checkpoint(const std::filesystem::path& path) {
  return is_flat_checkpoint(path) || is_native_checkpoint(path);
}

}  // namespace dj
