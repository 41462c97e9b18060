// Paths of the committed golden fixtures (tests/fixtures/README.md describes them).
#pragma once
#include <filesystem>
#include <cmath>
#include <string>

namespace dj::test {

inline std::filesystem::path source_dir() { return DIJIANG_SOURCE_DIR; }
inline std::filesystem::path fixture(const std::string& relative) {
  return source_dir() / "tests" / "fixtures" / relative;
}

// ‖a − b‖ / ‖b‖ over two equally long ranges.
template <typename A, typename B>
double relative_error(const A& a, const B& b) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    diff += d * d;
    norm += static_cast<double>(b[i]) * static_cast<double>(b[i]);
  }
  return norm > 0.0 ? std::sqrt(diff / norm) : std::sqrt(diff);
}

}  // namespace dj::test
