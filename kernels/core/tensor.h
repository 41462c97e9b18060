// A dense, row-major, owning tensor on the host: what checkpoint readers return and writers take,
// and the storage behind model parameter buffers. Compute kernels take raw pointers and sizes.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/core/dtype.h"
#include "kernels/core/error.h"

namespace dj {

using Shape = std::vector<int64_t>;

int64_t shape_numel(const Shape& shape);
std::string shape_string(const Shape& shape);  // "[2, 40, 1000]"

// Converts `count` elements of `from` at `source` to `to` at `target`, as Tensor::to does (through
// double: one rounding at most between floating types). The buffers must not overlap.
void convert_elements(const std::byte* source, DType from, std::byte* target, DType to, int64_t count);

class Tensor {
 public:
  Tensor() = default;
  // Zero-initialised storage of the given type and shape.
  Tensor(DType dtype, Shape shape);

  template <typename T>
  static Tensor from_vector(const std::vector<T>& values, Shape shape);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i)); }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  bool defined() const { return data_ != nullptr || numel() == 0; }

  std::byte* bytes() { return data_.get(); }
  const std::byte* bytes() const { return data_.get(); }
  template <typename T>
  T* data();
  template <typename T>
  const T* data() const;

  // Converted copy; floating types round-trip through double, so F16/BF16/F32 -> F32/F64 is exact.
  Tensor to(DType dtype) const;
  // All elements as double (any floating or integer dtype).
  std::vector<double> to_f64_vector() const;
  Tensor reshaped(Shape shape) const;  // shares storage; numel must match
  // A tensor over memory it does not own (no copy): the memory must outlive the tensor and every
  // copy of it.
  static Tensor borrowed(DType dtype, Shape shape, const void* data);

 private:
  void check_type(DType requested) const;

  DType dtype_ = DType::F32;
  Shape shape_;
  std::shared_ptr<std::byte[]> data_;
};

template <typename T>
Tensor Tensor::from_vector(const std::vector<T>& values, Shape shape) {
  Tensor out(dtype_of<T>(), std::move(shape));
  if (static_cast<int64_t>(values.size()) != out.numel())
    fail("{} values do not fill shape {}", values.size(), shape_string(out.shape()));
  std::copy(values.begin(), values.end(), out.data<T>());
  return out;
}

template <typename T>
T* Tensor::data() {
  check_type(dtype_of<T>());
  return reinterpret_cast<T*>(data_.get());
}
template <typename T>
const T* Tensor::data() const {
  check_type(dtype_of<T>());
  return reinterpret_cast<const T*>(data_.get());
}

}  // namespace dj
