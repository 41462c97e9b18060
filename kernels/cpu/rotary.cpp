#include "kernels/cpu/rotary.h"

#include <algorithm>
#include <cmath>
#include <mutex>

#include "kernels/core/error.h"

namespace dj::cpu {

namespace {

// Elementwise work below this many values is not worth waking the thread team for.
constexpr int64_t kParallelThreshold = 1 << 15;

// Tables larger than this (cos and sin together, in bytes) are not kept: a sequence that long is
// computed on per call, as the table costs little beside the rotation it serves.
constexpr int64_t kMaxCachedBytes = int64_t{64} << 20;
// (rotary_dims, base) pairs kept at once; a process normally uses one.
constexpr size_t kMaxCachedTables = 8;

int64_t table_bytes(int64_t positions, int64_t half) {
  return 2 * positions * half * static_cast<int64_t>(sizeof(double));
}

// Rotates every pair (i, i + r/2) of each head vector by angle sign * p * inv_freq[i]:
// sign +1 is the forward rotation, -1 its inverse (= transpose), which is the backward.
template <typename T>
void rotate(T* x, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
            int64_t position_offset, double sign) {
  if (rotary_dims < 0 || rotary_dims % 2 != 0 || rotary_dims > d)
    fail("rotary: rotary_dims {} must be even and within [0, head size {}]", rotary_dims, d);
  if (position_offset < 0) fail("rotary: negative position offset {}", position_offset);
  const int64_t half = rotary_dims / 2;
  if (half == 0 || BH == 0 || T_len == 0) return;

  // cos/sin depend only on (position, i): one table, shared across heads, layers and calls.
  const std::shared_ptr<const RotaryTable> table = rotary_table(rotary_dims, base, position_offset + T_len);
  const double* cos_table = table->cos.data() + position_offset * half;
  const double* sin_table = table->sin.data() + position_offset * half;

#pragma omp parallel for schedule(static) if (BH * T_len * rotary_dims > kParallelThreshold)
  for (int64_t row = 0; row < BH * T_len; ++row) {
    const int64_t t = row % T_len;
    const double* c = cos_table + t * half;
    const double* s = sin_table + t * half;
    T* lo = x + row * d;
    T* hi = lo + half;
    for (int64_t i = 0; i < half; ++i) {
      const double a = static_cast<double>(lo[i]);
      const double b = static_cast<double>(hi[i]);
      const double sn = sign * s[i];
      lo[i] = static_cast<T>(a * c[i] - b * sn);
      hi[i] = static_cast<T>(b * c[i] + a * sn);
    }
  }
}

}  // namespace

std::shared_ptr<const RotaryTable> compute_rotary_table(int64_t rotary_dims, double base, int64_t positions) {
  if (rotary_dims <= 0 || rotary_dims % 2 != 0 || positions < 0)
    fail("rotary table: rotary_dims {} must be even and positive, positions {} not negative", rotary_dims,
         positions);
  auto table = std::make_shared<RotaryTable>();
  const int64_t half = rotary_dims / 2;
  table->rotary_dims = rotary_dims;
  table->base = base;
  table->positions = positions;
  table->cos.resize(static_cast<size_t>(positions * half));
  table->sin.resize(table->cos.size());
  for (int64_t i = 0; i < half; ++i) {
    const double inv_freq =
        std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dims));
#pragma omp parallel for schedule(static) if (positions * half > kParallelThreshold)
    for (int64_t p = 0; p < positions; ++p) {
      const double angle = static_cast<double>(p) * inv_freq;
      table->cos[static_cast<size_t>(p * half + i)] = std::cos(angle);
      table->sin[static_cast<size_t>(p * half + i)] = std::sin(angle);
    }
  }
  return table;
}

std::shared_ptr<const RotaryTable> rotary_table(int64_t rotary_dims, double base, int64_t positions) {
  static std::mutex mutex;
  static std::vector<std::shared_ptr<const RotaryTable>> cache;  // most recently used last
  const int64_t half = rotary_dims / 2;
  if (table_bytes(positions, half) > kMaxCachedBytes) return compute_rotary_table(rotary_dims, base, positions);
  const std::lock_guard<std::mutex> lock(mutex);
  const auto found = std::find_if(cache.begin(), cache.end(), [&](const auto& t) {
    return t->rotary_dims == rotary_dims && t->base == base;
  });
  std::shared_ptr<const RotaryTable> table;
  if (found != cache.end()) {
    table = *found;
    cache.erase(found);
  }
  if (!table || table->positions < positions) {
    // Growing by at least half again keeps a run of rising offsets (token-by-token generation)
    // from recomputing the table at every step.
    int64_t grown = positions;
    if (table) grown = std::max(positions, table->positions + table->positions / 2);
    if (table_bytes(grown, half) > kMaxCachedBytes) grown = positions;
    table = compute_rotary_table(rotary_dims, base, grown);
  }
  cache.push_back(table);
  if (cache.size() > kMaxCachedTables) cache.erase(cache.begin());
  return table;
}

template <typename T>
void rotary_forward(T* x, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
                    int64_t position_offset) {
  rotate(x, BH, T_len, d, rotary_dims, base, position_offset, 1.0);
}

template <typename T>
void rotary_backward(T* dx, int64_t BH, int64_t T_len, int64_t d, int64_t rotary_dims, double base,
                     int64_t position_offset) {
  rotate(dx, BH, T_len, d, rotary_dims, base, position_offset, -1.0);
}

#define DJ_INSTANTIATE(T)                                                                   \
  template void rotary_forward<T>(T*, int64_t, int64_t, int64_t, int64_t, double, int64_t); \
  template void rotary_backward<T>(T*, int64_t, int64_t, int64_t, int64_t, double, int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(double)
#undef DJ_INSTANTIATE

}  // namespace dj::cpu
