// Flat parameter buffers with named views. Parameters, gradients (and later optimizer moments)
// each live in one contiguous buffer laid out by a ParameterLayout, so clipping, all-reduce,
// sharding and checkpointing work on slices rather than on lists of tensors.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/tensor.h"
#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"
#include "trainer/model/config.h"

namespace dj {

struct ParameterView {
  std::string name;  // Hugging Face tensor name
  int64_t offset = 0;
  Shape shape;
  bool trainable = true;  // fixed tensors (the DiJiang projection, frozen decay) get no gradient
  int64_t numel() const { return shape_numel(shape); }
};

class ParameterLayout {
 public:
  // The GPT-NeoX parameters in Hugging Face order (embed_in, layers, final norm, embed_out),
  // with the DiJiang attention tensors of each layer after its dense projection.
  static ParameterLayout gpt_neox(const ModelConfig& config);

  void add(const std::string& name, Shape shape, bool trainable = true);
  const std::vector<ParameterView>& views() const { return views_; }
  const ParameterView& view(const std::string& name) const;  // throws dj::Error if absent
  bool contains(const std::string& name) const { return index_.count(name) != 0; }
  int64_t total() const { return total_; }

 private:
  std::vector<ParameterView> views_;
  std::map<std::string, size_t> index_;
  int64_t total_ = 0;
};

std::string layer_prefix(int64_t layer);

// Whether a tensor is one the attention conversion adds to a softmax model (the DiJiang
// projection, gate, GroupNorm, decay and feature weights), rather than one of the source's.
bool added_by_conversion(const std::string& name);

// A contiguous range of the flat buffer whose parameters are used together: the GPT-NeoX
// segments are the input embedding (0), each layer (1..L) and the head (L + 1: final norm and,
// unless tied, the output embedding). ZeRO stage 3 gathers parameters a segment at a time, and
// stages 2-3 reduce gradients a segment at a time as the backward pass completes them.
struct ParameterSegment {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
std::vector<ParameterSegment> gpt_neox_segments(const ParameterLayout& layout, const ModelConfig& config);

// The balanced slice of rank `rank` of `world` over a flat buffer of `total` values:
// [total * rank / world, total * (rank + 1) / world). ZeRO shards the training state this way and
// the flat checkpoints hold one such slice per rank file.
std::pair<int64_t, int64_t> flat_shard_range(int64_t total, int rank, int world);

// Checks that checkpoint tensors match a layout exactly: no missing or unexpected names, every
// shape as declared, floating dtypes. With tied embeddings an `embed_out.weight` equal to
// `gpt_neox.embed_in.weight` is tolerated (some writers store both). `source` names the checkpoint.
void check_tensors(const ParameterLayout& layout, const ModelConfig& config, const TensorMap& tensors,
                   const std::string& source);
void check_tensors(const ParameterLayout& layout, const ModelConfig& config, const StoredTensorMap& tensors,
                   const std::string& source);  // "gpt_neox.layers.{layer}."

}  // namespace dj
