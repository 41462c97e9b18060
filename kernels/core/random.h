// A small seeded generator whose output is fixed by its definition (SplitMix64), so seeded draws
// (feature sampling, initialisation, data order) are the same with every compiler and standard
// library — std::shuffle and the std distributions are implementation-defined.
#pragma once
#include <cmath>
#include <cstdint>
#include <numbers>
#include <utility>

namespace dj {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 53 random bits.
  double uniform() { return static_cast<double>(next() >> 11) * 0x1p-53; }
  // Uniform in [0, n) by rejection, without modulo bias.
  uint64_t below(uint64_t n) {
    const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    uint64_t x;
    do x = next();
    while (x >= limit);
    return x % n;
  }
  // Standard normal by Box-Muller (the second value of each pair is kept for the next call).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = (static_cast<double>(next() >> 11) + 0.5) * 0x1p-53;  // (0, 1): log is finite
    const double u2 = uniform();
    const double radius = std::sqrt(-2.0 * std::log(u1));
    spare_ = radius * std::sin(2.0 * std::numbers::pi * u2);
    has_spare_ = true;
    return radius * std::cos(2.0 * std::numbers::pi * u2);
  }
  // Fisher-Yates shuffle of [first, first + n).
  template <typename T>
  void shuffle(T* first, int64_t n) {
    for (int64_t i = n - 1; i > 0; --i) std::swap(first[i], first[below(static_cast<uint64_t>(i + 1))]);
  }

 private:
  uint64_t state_;
  double spare_ = 0.0;
  bool has_spare_ = false;
};

}  // namespace dj
