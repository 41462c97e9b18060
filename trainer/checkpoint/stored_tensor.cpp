#include "trainer/checkpoint/stored_tensor.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <new>
#include <vector>

#include "kernels/core/error.h"

namespace dj {

namespace {
std::atomic<int64_t> g_bytes_read{0};
}  // namespace

int64_t stored_bytes_read() { return g_bytes_read.load(); }

StoredTensor::StoredTensor(DType dtype, Shape shape, RowReader read)
    : dtype_(dtype), shape_(std::move(shape)), read_(std::move(read)) {}

StoredTensor StoredTensor::in_memory(Tensor tensor) {
  const DType dtype = tensor.dtype();
  Shape shape = tensor.shape();
  const int64_t row_numel = shape.empty() ? 1 : shape_numel(Shape(shape.begin() + 1, shape.end()));
  const size_t row_bytes = static_cast<size_t>(row_numel) * dtype_size(dtype);
  StoredTensor stored(dtype, std::move(shape), [tensor = std::move(tensor), row_bytes](int64_t first, int64_t count,
                                                                                         std::byte* out) {
    if (count > 0)
      std::memcpy(out, tensor.bytes() + static_cast<size_t>(first) * row_bytes, static_cast<size_t>(count) * row_bytes);
  });
  stored.from_file_ = false;
  return stored;
}

StoredTensor StoredTensor::made_by(DType dtype, Shape shape, std::function<Tensor()> make) {
  const int64_t row_numel = shape.empty() ? 1 : shape_numel(Shape(shape.begin() + 1, shape.end()));
  const size_t row_bytes = static_cast<size_t>(row_numel) * dtype_size(dtype);
  StoredTensor stored(dtype, shape, [dtype, shape, make = std::move(make), row_bytes](int64_t first, int64_t count,
                                                                                    std::byte* out) {
    const Tensor tensor = make();
    if (tensor.dtype() != dtype || tensor.shape() != shape)
      fail("a tensor made as {} {} was declared {} {}", dtype_name(tensor.dtype()), shape_string(tensor.shape()),
           dtype_name(dtype), shape_string(shape));
    std::memcpy(out, tensor.bytes() + static_cast<size_t>(first) * row_bytes, static_cast<size_t>(count) * row_bytes);
  });
  stored.from_file_ = false;
  return stored;
}

int64_t StoredTensor::row_numel() const {
  return shape_.empty() ? 1 : shape_numel(Shape(shape_.begin() + 1, shape_.end()));
}

void StoredTensor::read_rows(int64_t first, int64_t count, std::byte* out) const {
  if (first < 0 || count < 0 || first > rows() || count > rows() - first)
    fail("rows [{}, {}) are outside a tensor of shape {}", first, first + count, shape_string(shape_));
  if (count == 0 || row_numel() == 0) return;
  read_(first, count, out);
  if (from_file_) g_bytes_read += count * static_cast<int64_t>(row_bytes());
}

void StoredTensor::read_elements(int64_t first, int64_t count, DType dtype, std::byte* out) const {
  if (first < 0 || count < 0 || first > numel() || count > numel() - first)
    fail("elements [{}, {}) are outside a tensor of shape {}", first, first + count, shape_string(shape_));
  if (count == 0) return;
  const int64_t per_row = row_numel();
  const int64_t first_row = first / per_row, end_row = (first + count + per_row - 1) / per_row;
  std::vector<std::byte> rows(static_cast<size_t>(end_row - first_row) * row_bytes());
  read_rows(first_row, end_row - first_row, rows.data());
  convert_elements(rows.data() + static_cast<size_t>(first - first_row * per_row) * dtype_size(dtype_), dtype_, out,
                   dtype, count);
}

Tensor StoredTensor::read(DType dtype) const {
  Tensor out;
  try {
    out = Tensor(dtype, shape_);
  } catch (const std::bad_alloc&) {  // a compressed dataset can claim more than memory holds
    fail("a tensor of shape {} and dtype {} needs {} bytes, more than can be allocated", shape_string(shape_),
         dtype_name(dtype), static_cast<size_t>(numel()) * dtype_size(dtype));
  }
  if (numel() == 0) return out;
  if (dtype == dtype_) {
    read_rows(0, rows(), out.bytes());
    return out;
  }
  const int64_t per_piece = std::max<int64_t>(1, static_cast<int64_t>(kConvertBytes / std::max<size_t>(row_bytes(), 1)));
  std::vector<std::byte> piece(static_cast<size_t>(std::min(per_piece, rows())) * row_bytes());
  const size_t out_row_bytes = static_cast<size_t>(row_numel()) * dtype_size(dtype);
  for (int64_t first = 0; first < rows(); first += per_piece) {
    const int64_t count = std::min(per_piece, rows() - first);
    read_rows(first, count, piece.data());
    convert_elements(piece.data(), dtype_, out.bytes() + static_cast<size_t>(first) * out_row_bytes, dtype,
                     count * row_numel());
  }
  return out;
}

TensorMap read_all(const StoredTensorMap& stored) {
  TensorMap tensors;
  for (const auto& [name, tensor] : stored) tensors.emplace(name, tensor.read());
  return tensors;
}

TensorPlan plan_of(const TensorMap& tensors) {
  TensorPlan plan;
  for (const auto& entry : tensors) {
    const Tensor& tensor = entry.second;
    plan.emplace(entry.first, PlannedTensor{tensor.dtype(), tensor.shape(), [tensor] { return tensor; }});
  }
  return plan;
}

TensorMap make_all(const TensorPlan& plan) {
  TensorMap tensors;
  for (const auto& [name, planned] : plan) tensors.emplace(name, make_planned(name, planned, "make_all"));
  return tensors;
}

Tensor make_planned(const std::string& name, const PlannedTensor& planned, const std::string& writer) {
  Tensor tensor = planned.make();
  if (!tensor.defined()) fail("{}: tensor '{}' has no data", writer, name);
  if (tensor.dtype() != planned.dtype || tensor.shape() != planned.shape)
    fail("{}: tensor '{}' was planned as {} {} but made as {} {}", writer, name, dtype_name(planned.dtype),
         shape_string(planned.shape), dtype_name(tensor.dtype()), shape_string(tensor.shape()));
  return tensor;
}

}  // namespace dj
