// Shared by the checkpoint reader tests: scratch directories, file bytes, expected errors and
// tensor comparison.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>

#include "kernels/core/error.h"
#include "trainer/checkpoint/tensor_map.h"

namespace dj::test {

// A fresh directory under the system temp directory, removed with everything in it on scope exit.
class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = std::filesystem::temp_directory_path() /
            fmt::format("dijiang-test-{}-{}", ::getpid(), counter.fetch_add(1));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

inline void write_bytes(const std::filesystem::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Success when `action` throws dj::Error with a message containing `expected`.
template <typename Action>
::testing::AssertionResult fails_with(Action&& action, std::string_view expected) {
  try {
    action();
  } catch (const Error& e) {
    if (std::string_view(e.what()).find(expected) != std::string_view::npos)
      return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "error \"" << e.what() << "\" does not contain \"" << expected << "\"";
  }
  return ::testing::AssertionFailure() << "no dj::Error thrown (expected \"" << expected << "\")";
}

// Same names, dtypes, shapes and bytes.
inline ::testing::AssertionResult identical(const TensorMap& a, const TensorMap& b) {
  if (a.size() != b.size())
    return ::testing::AssertionFailure() << a.size() << " tensors vs " << b.size();
  for (const auto& [name, tensor] : a) {
    const auto other = b.find(name);
    if (other == b.end()) return ::testing::AssertionFailure() << "'" << name << "' missing";
    const Tensor& t = other->second;
    if (t.dtype() != tensor.dtype() || t.shape() != tensor.shape())
      return ::testing::AssertionFailure()
             << "'" << name << "': " << dtype_name(tensor.dtype()) << shape_string(tensor.shape())
             << " vs " << dtype_name(t.dtype()) << shape_string(t.shape());
    if (std::memcmp(t.bytes(), tensor.bytes(), tensor.nbytes()) != 0)
      return ::testing::AssertionFailure() << "'" << name << "': bytes differ";
  }
  return ::testing::AssertionSuccess();
}

}  // namespace dj::test
