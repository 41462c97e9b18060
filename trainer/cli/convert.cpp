// dijiang convert: a Hugging Face directory or native checkpoint to a native checkpoint; also
// merges a flat (per-rank) training checkpoint into one native checkpoint, and splits a training
// checkpoint into a flat one (--ranks).
#include <spdlog/spdlog.h>

#include "kernels/core/error.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/checkpoint/native.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/dtype_option.h"
#include "trainer/cli/model_options.h"
#include "trainer/model/source.h"
#include "trainer/train/resources.h"

namespace dj::cli {

namespace {
struct ConvertOptions {
  std::string from, to, dtype = "f32", attention;
  int shards = 0, ranks = 0;
  DiJiangOptions dijiang;
};
}  // namespace

void register_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "convert",
      "write a model as a native HDF5 checkpoint; merge a flat (per-rank) training checkpoint into one "
      "file, or split a training checkpoint into a flat one with --ranks");
  auto o = std::make_shared<ConvertOptions>();
  cmd->add_option("--from", o->from,
                  "Hugging Face directory, native checkpoint or flat checkpoint directory "
                  "(rank-RRRRR-of-NNNNN.h5 files; merged whole, optimizer state and metadata "
                  "included, so the result resumes training)")
      ->required();
  cmd->add_option("--to", o->to, "output .h5 file (or directory with --shards or --ranks)")->required();
  auto* dtype_flag = cmd->add_option("--dtype", o->dtype, "stored dtype: f32 (default), f64, f16 or bf16")
                         ->check(CLI::IsMember(floating_dtype_names()));
  auto* shards = cmd->add_option("--shards", o->shards, "write a directory of this many shard files")
                     ->check(CLI::Range(1, 65536));
  auto* ranks = cmd->add_option("--ranks", o->ranks,
                                "split a training checkpoint (written by `dijiang train`; a flat one is "
                                "resharded) into a flat checkpoint directory of this many per-rank "
                                "files, for resuming a sharded run on that many ranks; parameters, "
                                "optimizer state and metadata are kept bit for bit")
                    ->check(CLI::Range(1, kMaxFlatRanks));
  auto* attention = cmd->add_option("--attention", o->attention,
                                    "softmax, dijiang, retnet (DiJiang without its feature map), or a normalised "
                                    "linear-attention baseline: performer, cosformer or elu (these take --seed, "
                                    "--chunk and --form); default: as the source")
                        ->check(CLI::IsMember({"softmax", "dijiang", "retnet", "performer", "cosformer", "elu"}));
  ranks->excludes(dtype_flag)->excludes(shards)->excludes(attention);
  const auto dijiang_option = [&](CLI::Option* option) { option->needs(attention); };
  dijiang_option(cmd->add_option("--seed", o->dijiang.seed, "seed of the feature sampling and W_G initialisation"));
  dijiang_option(add_choice(cmd, "--sampling", o->dijiang.sampling, "qmc (default) or mc"));
  dijiang_option(add_choice(cmd, "--projection", o->dijiang.projection,
                            "the feature map's projection: dct (default), gaussian (the ablation without the DCT) "
                            "or none (as --attention retnet)"));
  dijiang_option(cmd->add_option("--chunk", o->dijiang.chunk, "chunk size of the chunkwise form (default 64)")
                     ->check(CLI::Range(int64_t{1}, int64_t{65536})));
  dijiang_option(add_choice(cmd, "--form", o->dijiang.form, "parallel, chunkwise (default) or recurrent"));
  dijiang_option(cmd->add_flag("--feature-weights", o->dijiang.feature_weights, "learned per-head feature weights"));
  dijiang_option(cmd->add_flag("--learnable-decay", o->dijiang.learnable_decay, "train log γ (frozen by default)"));
  dijiang_option(cmd->add_flag("--group-norm-per-head", o->dijiang.group_norm_per_head,
                               "GroupNorm over H groups instead of head_dim groups"));
  cmd->callback([o] {
    if (o->ranks > 0) {
      split_to_flat_checkpoint(o->from, o->to, o->ranks);
      spdlog::info("wrote {} ({} rank files; parameters, optimizer state and metadata of {})", o->to,
                   o->ranks, o->from);
      return;
    }
    // A flat checkpoint converted as it is (f32, same attention) is merged with everything it
    // holds; asked for another dtype or attention it is converted as a model, as any source is.
    if (is_flat_checkpoint(o->from) && o->attention.empty() && o->dtype == "f32") {
      const NativeCheckpoint merged = merge_flat_checkpoint(o->from);
      if (o->shards > 0)
        write_native_checkpoint_directory(o->to, merged, o->shards);
      else
        write_native_checkpoint(o->to, merged);
      const auto step = merged.metadata.find("step");
      spdlog::info("wrote {} (merged {}: {} tensors with optimizer state{})", o->to, o->from,
                   merged.tensors.size(), step == merged.metadata.end() ? "" : ", step " + step->dump());
      return;
    }
    // Streamed: one tensor is read, converted and written at a time.
    StoredModelSource source = open_model_source(o->from);
    if (!source.optimizer_state.empty())
      spdlog::info("{}: writing the model only; the optimizer state is dropped", o->from);
    if (o->attention == "softmax" && source.config.is_converted())
      fail("{} has {} attention; converting back to softmax attention is not supported", o->from,
           source.config.attention_name());
    if (o->attention == "retnet") {
      if (o->dijiang.projection == FeatureProjection::Gaussian)
        fail("--attention retnet has no feature map, but --projection is gaussian");
      o->dijiang.projection = FeatureProjection::None;
    }
    if (o->attention == "dijiang" || o->attention == "retnet") {
      convert_to_dijiang(source, o->dijiang);
    } else if (const auto map = find_choice<cpu::LinearFeatureMap>(o->attention)) {
      const DiJiangOptions defaults;
      if (o->dijiang.sampling != defaults.sampling || o->dijiang.projection != defaults.projection ||
          o->dijiang.feature_weights || o->dijiang.learnable_decay || o->dijiang.group_norm_per_head)
        fail("--attention {} takes --seed, --chunk and --form only (the other options are DiJiang's)", o->attention);
      convert_to_linear(source, LinearOptions{*map, o->dijiang.seed, o->dijiang.chunk, o->dijiang.form});
    }
    const DType dtype = parse_floating_dtype(o->dtype);
    const nlohmann::json config = source.config.to_hf_json(source.hf_config, torch_dtype_name(o->dtype));
    const nlohmann::json metadata = {{"converted_from", source.path.string()},
                                     {"source_format", source.kind == SourceKind::HuggingFace ? "hf" : "native"},
                                     {"writer", "dijiang 0.1.0"}};
    const TensorPlan tensors = validated_plan(source, dtype);
    if (o->shards > 0)
      write_native_checkpoint_directory(o->to, config, metadata, tensors, o->shards);
    else
      write_native_checkpoint(o->to, config, metadata, tensors);
    spdlog::info("wrote {} ({} attention, {} tensors, {} parameters, {}; peak RSS {:.1f} MB)", o->to,
                 source.config.attention_name(),
                 tensors.size(),
                 source.config.parameter_count(), o->dtype, static_cast<double>(peak_resident_bytes()) / 1e6);
  });
}

}  // namespace dj::cli
