// Conversions between flat checkpoints and native ones (dijiang convert): merging the rank files
// into one native checkpoint, and splitting a training checkpoint into rank files for any number of
// ranks. The format and its reader and writer: flat_checkpoint.{h,cpp}.
#include <cstring>
#include <system_error>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/hdf5_support.h"
#include "trainer/checkpoint/native.h"
#include "trainer/model/config.h"
#include "trainer/model/parameters.h"

namespace dj {

namespace fs = std::filesystem;
using hdf5::FileErrors;

NativeCheckpoint merge_flat_checkpoint(const fs::path& dir) {
  const FlatCheckpointReader reader(dir);
  const std::string label =
      (reader.path() / flat_shard_name(0, reader.world())).string() + " (config attribute)";
  const ModelConfig config = ModelConfig::from_hf_json(reader.config(), label);
  const ParameterLayout layout = ParameterLayout::gpt_neox(config);
  if (layout.total() != reader.total())
    fail("{}: its config lays out {} parameters but the rank files hold {} values",
         reader.path().string(), layout.total(), reader.total());
  NativeCheckpoint checkpoint;
  checkpoint.config = reader.config();
  checkpoint.metadata = reader.metadata();
  for (const auto& view : layout.views()) {
    for (const auto& [prefix, dataset] :
         {std::pair{"", kFlatParameters}, std::pair{"optimizer.m.", kFlatMomentM},
          std::pair{"optimizer.v.", kFlatMomentV}}) {
      Tensor tensor(DType::F32, view.shape);
      reader.read(dataset, view.offset, view.offset + view.numel(), tensor.data<float>());
      checkpoint.tensors.emplace(prefix + view.name, std::move(tensor));
    }
  }
  return checkpoint;
}

void split_to_flat_checkpoint(const fs::path& input, const fs::path& out_path, int ranks) {
  const fs::path out = without_trailing_separator(out_path);
  const FileErrors out_errors(out);
  if (ranks < 1 || ranks > kMaxFlatRanks) out_errors.fail("rank count {} is not in 1..{}", ranks, kMaxFlatRanks);
  // Refused before the (possibly long) read: where the result cannot go.
  std::error_code error;
  if (!fs::is_directory(parent_of(out), error))
    out_errors.fail("parent directory {} does not exist", parent_of(out).string());
  const fs::file_status status = fs::symlink_status(out, error);
  if (fs::exists(status)) {
    if (!fs::is_directory(status)) out_errors.fail("exists and is not a directory");
    if (!fs::is_empty(out, error) && !is_flat_checkpoint(out))
      out_errors.fail("directory exists and is not a flat checkpoint; refusing to replace it");
  }

  const FileErrors errors(input);
  if (!fs::exists(input, error)) errors.fail("no such file or directory");
  if (!is_flat_checkpoint(input) && !is_native_checkpoint(input))
    errors.fail("not a training checkpoint (neither a native checkpoint written by `dijiang train` "
                "nor a flat checkpoint directory)");
  NativeCheckpoint checkpoint =
      is_flat_checkpoint(input) ? merge_flat_checkpoint(input) : read_native_checkpoint(input);
  const auto kind = checkpoint.metadata.find("kind");
  const std::string kind_text =
      kind == checkpoint.metadata.end() ? "none" : kind->is_string() ? kind->get<std::string>() : kind->dump();
  if (kind_text != "training")
    errors.fail("not a training checkpoint (metadata kind: {}); only checkpoints written by "
                "`dijiang train` hold the optimizer state a flat checkpoint needs",
                kind_text);
  const ModelConfig config =
      ModelConfig::from_hf_json(checkpoint.config, input.string() + " (config attribute)");
  const ParameterLayout layout = ParameterLayout::gpt_neox(config);

  TensorMap model, optimizer;
  for (auto& [name, tensor] : checkpoint.tensors)
    (name.starts_with("optimizer.") ? optimizer : model).emplace(name, std::move(tensor));
  checkpoint.tensors.clear();
  if (optimizer.empty())
    errors.fail("has no optimizer state (optimizer.m.* and optimizer.v.* tensors)");
  check_tensors(layout, config, model, input.string());

  const auto total = static_cast<size_t>(layout.total());
  std::vector<float> params(total), m(total), v(total);
  const auto copy = [&](TensorMap& from, const std::string& name, const ParameterView& view,
                        std::vector<float>& to) {
    const auto it = from.find(name);
    if (it == from.end()) errors.fail("tensor '{}' is missing", name);
    if (it->second.shape() != view.shape)
      errors.fail("tensor '{}' has shape {}, the config needs {}", name,
                  shape_string(it->second.shape()), shape_string(view.shape));
    if (it->second.dtype() != DType::F32)
      errors.fail("tensor '{}' is {}; training checkpoints hold F32", name,
                  dtype_name(it->second.dtype()));
    std::memcpy(to.data() + view.offset, it->second.bytes(), it->second.nbytes());
    from.erase(it);
  };
  for (const auto& view : layout.views()) {
    copy(model, view.name, view, params);
    copy(optimizer, "optimizer.m." + view.name, view, m);
    copy(optimizer, "optimizer.v." + view.name, view, v);
  }
  if (!optimizer.empty())
    errors.fail("unexpected optimizer state '{}' (the model has no such parameter)",
                optimizer.begin()->first);

  const fs::path staging = flat_staging_dir(out);
  reset_flat_staging_dir(staging);
  try {
    for (int rank = 0; rank < ranks; ++rank) {
      FlatShardHeader header;
      header.rank = rank;
      header.world = ranks;
      std::tie(header.begin, header.end) = flat_shard_range(layout.total(), rank, ranks);
      header.total = layout.total();
      header.config = checkpoint.config;
      header.metadata = checkpoint.metadata;
      const auto offset = static_cast<size_t>(header.begin);
      write_flat_shard(staging, header, params.data() + offset, m.data() + offset,
                       v.data() + offset);
    }
    finish_flat_checkpoint(staging, out, ranks);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(staging, ignored);
    throw;
  }
}

}  // namespace dj
