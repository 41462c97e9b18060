// Partial rotary position embedding (GPT-NeoX), in place.
//
// Accuracy: the CPU op forms every angle and its cos/sin in double. Rather than approximate that on
// the device (sincosf of a large fp32 angle loses digits as positions grow), RotaryTable computes
// the very same doubles on the host with the CPU's expressions (std::pow, std::cos, std::sin of
// double(offset + t) * inv_freq) once per (max_len, rotary_dims, base, offset) and uploads them. The
// kernel then rotates in double with __dmul_rn/__dsub_rn/__dadd_rn (no fused multiply-add) and
// rounds once to T: fp32 results are the CPU's bit for bit when the CPU build does not contract
// a * c - b * s into an FMA (no FMA target); where it does (e.g. -march=native, GCC's C++ default
// -ffp-contract=fast), the double results differ in the last bit and the float results in the rare
// case (~2^-28 per value) that this bit decides the rounding. bf16 results are the double rotation
// rounded once to nearest even.
//
// Design: one thread per rotated pair (row, i), i < rotary_dims/2, grid-stride over
// BH * T_len * rotary_dims/2 pairs, 256 threads a block. Consecutive threads take consecutive i of
// a row, so the loads of lo[i] and hi[i] (and of the table's 16-byte (cos, sin) entries) are
// coalesced; the d - rotary_dims untouched values of each row are never read. Traffic: read and
// write 2 * rotary_dims/2 values per row plus the table (T_len * rotary_dims/2 * 16 bytes, shared by
// all BH rows, L2-resident). The double arithmetic (4 multiplies, 2 adds per pair) is negligible
// beside the memory traffic on GPUs with full-rate fp64 (A100, H100/H200).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <stdexcept>
#include <utility>
#include <vector>

#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/ops_device.cuh"

namespace dj::cuda {

namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rotary_kernel(T* x, const double2* table, int64_t rows, int64_t T_len, int64_t d, int64_t half,
                  bool inverse) {
  const int64_t total = rows * half;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += stride) {
    const int64_t row = idx / half;
    const int64_t i = idx - row * half;
    const int64_t t = row % T_len;
    const double2 cs = table[t * half + i];
    const double c = cs.x;
    const double s = inverse ? -cs.y : cs.y;  // the CPU's table holds sign * sin: exact negation
    T* lo = x + row * d + i;
    T* hi = lo + half;
    const double a = static_cast<double>(detail::to_f32(*lo));
    const double b = static_cast<double>(detail::to_f32(*hi));
    *lo = detail::from_f64<T>(__dsub_rn(__dmul_rn(a, c), __dmul_rn(b, s)));
    *hi = detail::from_f64<T>(__dadd_rn(__dmul_rn(b, c), __dmul_rn(a, s)));
  }
}

template <typename T>
void rotate(T* x, const RotaryTable& table, int64_t BH, int64_t T_len, int64_t d, bool inverse,
            cudaStream_t stream, int64_t position_offset) {
  const int64_t rotary_dims = table.rotary_dims();
  if (rotary_dims > d)
    throw std::invalid_argument("rotary: rotary_dims exceeds the head size");
  if (position_offset < 0 || position_offset + T_len > table.max_len())
    throw std::invalid_argument("rotary: positions beyond the table's max_len");
  const int64_t half = rotary_dims / 2;
  if (half == 0 || BH <= 0 || T_len <= 0) return;
  const int64_t rows = BH * T_len;
  launch("rotary_kernel", rotary_kernel<T>, detail::grid_for(rows * half, kThreads), kThreads, 0, stream, x,
         reinterpret_cast<const double2*>(table.data()) + position_offset * half, rows, T_len, d, half, inverse);
}

}  // namespace

RotaryTable::RotaryTable(int64_t max_len, int64_t rotary_dims, double base, int64_t position_offset)
    : max_len_(max_len), rotary_dims_(rotary_dims) {
  if (rotary_dims < 0 || rotary_dims % 2 != 0)
    throw std::invalid_argument("RotaryTable: rotary_dims must be even and non-negative");
  if (max_len < 0) throw std::invalid_argument("RotaryTable: negative max_len");
  const int64_t half = rotary_dims / 2;
  if (half == 0 || max_len == 0) return;
  std::vector<double> host(static_cast<size_t>(2 * max_len * half));
  for (int64_t i = 0; i < half; ++i) {
    // The same expressions as kernels/cpu/rotary.cpp, so the same doubles.
    const double inv_freq =
        std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dims));
    for (int64_t t = 0; t < max_len; ++t) {
      const double angle = static_cast<double>(position_offset + t) * inv_freq;
      host[static_cast<size_t>(2 * (t * half + i))] = std::cos(angle);
      host[static_cast<size_t>(2 * (t * half + i) + 1)] = std::sin(angle);
    }
  }
  DJ_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&table_), host.size() * sizeof(double)));
  const cudaError_t copied =
      cudaMemcpy(table_, host.data(), host.size() * sizeof(double), cudaMemcpyHostToDevice);
  if (copied != cudaSuccess) {
    cudaFree(table_);
    table_ = nullptr;
    check(copied, "cudaMemcpy(rotary table)");
  }
}

RotaryTable::~RotaryTable() {
  if (table_ != nullptr) cudaFree(table_);
}

RotaryTable::RotaryTable(RotaryTable&& other) noexcept
    : table_(std::exchange(other.table_, nullptr)),
      max_len_(std::exchange(other.max_len_, 0)),
      rotary_dims_(std::exchange(other.rotary_dims_, 0)) {}

RotaryTable& RotaryTable::operator=(RotaryTable&& other) noexcept {
  std::swap(table_, other.table_);
  std::swap(max_len_, other.max_len_);
  std::swap(rotary_dims_, other.rotary_dims_);
  return *this;
}

template <typename T>
void rotary_forward(T* x, const RotaryTable& table, int64_t BH, int64_t T_len, int64_t d,
                    cudaStream_t stream, int64_t position_offset) {
  rotate(x, table, BH, T_len, d, false, stream, position_offset);
}

template <typename T>
void rotary_backward(T* dx, const RotaryTable& table, int64_t BH, int64_t T_len, int64_t d,
                     cudaStream_t stream, int64_t position_offset) {
  rotate(dx, table, BH, T_len, d, true, stream, position_offset);
}

#define DJ_INSTANTIATE(T)                                                                       \
  template void rotary_forward<T>(T*, const RotaryTable&, int64_t, int64_t, int64_t, cudaStream_t, \
                                  int64_t);                                                       \
  template void rotary_backward<T>(T*, const RotaryTable&, int64_t, int64_t, int64_t, cudaStream_t, \
                                   int64_t);
DJ_INSTANTIATE(float)
DJ_INSTANTIATE(bf16)
#undef DJ_INSTANTIATE

}  // namespace dj::cuda
