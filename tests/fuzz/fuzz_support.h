// Shared by the libFuzzer harnesses: the input written to a scratch file, since every parser
// reads files. The files live in one directory per process under /dev/shm when it exists (tmpfs:
// no disk traffic per execution), else under TMPDIR.
#pragma once
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace dj::fuzz {

inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    std::error_code error;
    std::filesystem::path root = std::filesystem::is_directory("/dev/shm", error)
                                     ? std::filesystem::path("/dev/shm")
                                     : std::filesystem::temp_directory_path();
    std::filesystem::path path = root / ("dijiang-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(path);
    // Removed when the fuzzer exits normally; a crash leaves it for the post-mortem.
    std::atexit([] {
      std::error_code ignored;
      std::filesystem::remove_all(scratch_dir(), ignored);
    });
    return path;
  }();
  return dir;
}

// Writes `bytes` to `name` in the scratch directory and returns its path.
inline std::filesystem::path write_file(const std::string& name, std::string_view bytes) {
  const std::filesystem::path path = scratch_dir() / name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

}  // namespace dj::fuzz
