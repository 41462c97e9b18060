// Tensors read when asked, and tensors written when reached: the streaming halves of every
// checkpoint reader and writer.
//
// A reader opens a file, checks its header (names, dtypes, shapes, where the bytes lie) and returns
// a StoredTensor per tensor; the data stays on disk until read_rows or read asks for it. Rows are
// ranges of the first dimension (a scalar has one row), so that a caller can read a tensor in
// pieces or only the part it needs. The eager readers (read_safetensors, read_native_checkpoint,
// ...) are these readers followed by read_all.
//
// A writer takes a TensorPlan: every output tensor's dtype and shape up front (headers and
// offsets are written first) and a function that makes the tensor when the writer reaches it, so
// that a conversion holds one tensor at a time whatever the model's size.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "kernels/core/tensor.h"
#include "trainer/checkpoint/tensor_map.h"

namespace dj {

class StoredTensor {
 public:
  // Writes rows [first, first + count) in the stored dtype to `out` (count × row_bytes() bytes);
  // the range is checked before it is called. Throws dj::Error naming the file on a failed read.
  using RowReader = std::function<void(int64_t first, int64_t count, std::byte* out)>;

  StoredTensor(DType dtype, Shape shape, RowReader read);
  // A tensor already in memory (flat checkpoints, tables made on reading), served as stored.
  static StoredTensor in_memory(Tensor tensor);
  // A tensor made when read (by `make`, which must give `dtype` and `shape`; called per read).
  static StoredTensor made_by(DType dtype, Shape shape, std::function<Tensor()> make);

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return shape_numel(shape_); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  int64_t rows() const { return shape_.empty() ? 1 : shape_[0]; }
  int64_t row_numel() const;
  size_t row_bytes() const { return static_cast<size_t>(row_numel()) * dtype_size(dtype_); }

  void read_rows(int64_t first, int64_t count, std::byte* out) const;
  // Elements [first, first + count) of the row-major tensor, converted to `dtype`: the rows that
  // hold them are read (in one call) and the range is cut from them.
  void read_elements(int64_t first, int64_t count, DType dtype, std::byte* out) const;
  // The whole tensor converted to `dtype` (as Tensor::to converts). In the stored dtype it is read
  // straight into the result; otherwise in pieces of at most kConvertBytes of stored data, so that
  // a conversion holds the result and one piece.
  Tensor read(DType dtype) const;
  Tensor read() const { return read(dtype_); }

  static constexpr size_t kConvertBytes = 16u << 20;

 private:
  DType dtype_;
  Shape shape_;
  RowReader read_;
  bool from_file_ = true;
};

using StoredTensorMap = std::map<std::string, StoredTensor>;

// Bytes this process has read through StoredTensors backed by files (not in_memory or made_by
// ones), for the reports of what a sliced load read.
int64_t stored_bytes_read();

// Reads every tensor in its stored dtype.
TensorMap read_all(const StoredTensorMap& stored);

// One output tensor: its dtype and shape, and how to make it (called once, when the writer
// reaches it; the result must have that dtype and shape).
struct PlannedTensor {
  DType dtype;
  Shape shape;
  std::function<Tensor()> make;
  size_t nbytes() const { return static_cast<size_t>(shape_numel(shape)) * dtype_size(dtype); }
};

using TensorPlan = std::map<std::string, PlannedTensor>;

// Tensors already in memory as a plan.
TensorPlan plan_of(const TensorMap& tensors);
// Makes every planned tensor (all held at once: for tests and small models).
TensorMap make_all(const TensorPlan& plan);
// Makes `planned` and checks that it has the promised dtype and shape; `writer` names the output.
Tensor make_planned(const std::string& name, const PlannedTensor& planned, const std::string& writer);

}  // namespace dj
