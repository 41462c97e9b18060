#include "kernels/core/tensor.h"

#include <cstring>

#include "kernels/core/error.h"

namespace dj {

int64_t shape_numel(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string shape_string(const Shape& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_)
    if (d < 0) fail("negative dimension in shape {}", shape_string(shape_));
  const size_t n = nbytes();
  data_ = std::shared_ptr<std::byte[]>(new std::byte[n == 0 ? 1 : n]());
}

void Tensor::check_type(DType requested) const {
  if (requested != dtype_)
    fail("tensor of dtype {} and shape {} accessed as {}", dtype_name(dtype_), shape_string(shape_),
         dtype_name(requested));
}

namespace {
double load(const std::byte* p, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::F64: return reinterpret_cast<const double*>(p)[i];
    case DType::F32: return reinterpret_cast<const float*>(p)[i];
    case DType::F16: return half_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
    case DType::BF16: return bf16_to_float(reinterpret_cast<const uint16_t*>(p)[i]);
    case DType::I64: return static_cast<double>(reinterpret_cast<const int64_t*>(p)[i]);
    case DType::I32: return reinterpret_cast<const int32_t*>(p)[i];
    case DType::I16: return reinterpret_cast<const int16_t*>(p)[i];
    case DType::I8: return reinterpret_cast<const int8_t*>(p)[i];
    case DType::U64: return static_cast<double>(reinterpret_cast<const uint64_t*>(p)[i]);
    case DType::U32: return reinterpret_cast<const uint32_t*>(p)[i];
    case DType::U16: return reinterpret_cast<const uint16_t*>(p)[i];
    case DType::U8:
    case DType::BOOL: return reinterpret_cast<const uint8_t*>(p)[i];
  }
  return 0.0;
}

void store(std::byte* p, DType dtype, int64_t i, double v) {
  switch (dtype) {
    case DType::F64: reinterpret_cast<double*>(p)[i] = v; break;
    case DType::F32: reinterpret_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::F16: reinterpret_cast<uint16_t*>(p)[i] = float_to_half(static_cast<float>(v)); break;
    case DType::BF16: reinterpret_cast<uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::I64: reinterpret_cast<int64_t*>(p)[i] = static_cast<int64_t>(v); break;
    case DType::I32: reinterpret_cast<int32_t*>(p)[i] = static_cast<int32_t>(v); break;
    case DType::I16: reinterpret_cast<int16_t*>(p)[i] = static_cast<int16_t>(v); break;
    case DType::I8: reinterpret_cast<int8_t*>(p)[i] = static_cast<int8_t>(v); break;
    case DType::U64: reinterpret_cast<uint64_t*>(p)[i] = static_cast<uint64_t>(v); break;
    case DType::U32: reinterpret_cast<uint32_t*>(p)[i] = static_cast<uint32_t>(v); break;
    case DType::U16: reinterpret_cast<uint16_t*>(p)[i] = static_cast<uint16_t>(v); break;
    case DType::U8: reinterpret_cast<uint8_t*>(p)[i] = static_cast<uint8_t>(v); break;
    case DType::BOOL: reinterpret_cast<uint8_t*>(p)[i] = v != 0.0 ? 1 : 0; break;
  }
}
}  // namespace

void convert_elements(const std::byte* source, DType from, std::byte* target, DType to, int64_t count) {
  if (count <= 0) return;
  if (from == to) {
    std::memcpy(target, source, static_cast<size_t>(count) * dtype_size(from));
    return;
  }
  for (int64_t i = 0; i < count; ++i) store(target, to, i, load(source, from, i));
}

Tensor Tensor::to(DType dtype) const {
  Tensor out(dtype, shape_);
  convert_elements(bytes(), dtype_, out.bytes(), dtype, numel());
  return out;
}

std::vector<double> Tensor::to_f64_vector() const {
  std::vector<double> out(static_cast<size_t>(numel()));
  for (int64_t i = 0; i < numel(); ++i) out[static_cast<size_t>(i)] = load(bytes(), dtype_, i);
  return out;
}

Tensor Tensor::borrowed(DType dtype, Shape shape, const void* data) {
  Tensor out;
  out.dtype_ = dtype;
  out.shape_ = std::move(shape);
  // The aliasing constructor: no control block owns `data`, so nothing frees it.
  out.data_ = std::shared_ptr<std::byte[]>(std::shared_ptr<std::byte[]>(), static_cast<std::byte*>(const_cast<void*>(data)));
  return out;
}

Tensor Tensor::reshaped(Shape shape) const {
  if (shape_numel(shape) != numel())
    fail("cannot reshape {} to {}", shape_string(shape_), shape_string(shape));
  Tensor out = *this;
  out.shape_ = std::move(shape);
  return out;
}

}  // namespace dj
