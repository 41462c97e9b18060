// dijiang convert: a Hugging Face directory or native checkpoint to a native checkpoint.
#include <spdlog/spdlog.h>

#include "kernels/core/error.h"
#include "trainer/checkpoint/native.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/dtype_option.h"
#include "trainer/model/parameters.h"
#include "trainer/model/source.h"

namespace dj::cli {

namespace {
struct ConvertOptions {
  std::string from, to, dtype = "f32";
  int shards = 0;
};
}  // namespace

void register_convert(CLI::App& app) {
  auto* cmd = app.add_subcommand("convert", "write a model as a native HDF5 checkpoint");
  auto o = std::make_shared<ConvertOptions>();
  cmd->add_option("--from", o->from, "Hugging Face directory or native checkpoint")->required();
  cmd->add_option("--to", o->to, "output .h5 file (or directory with --shards)")->required();
  cmd->add_option("--dtype", o->dtype, "stored dtype: f32 (default), f64, f16 or bf16")
      ->check(CLI::IsMember(floating_dtype_names()));
  cmd->add_option("--shards", o->shards, "write a directory of this many shard files")->check(CLI::Range(1, 65536));
  cmd->callback([o] {
    ModelSource source = read_model_source(o->from);
    // Every tensor is checked against the config before anything is written, then converted
    // straight from its stored dtype (one rounding at most).
    const ParameterLayout layout = ParameterLayout::gpt_neox(source.config);
    check_tensors(layout, source.config, source.tensors, source.path.string());
    const DType dtype = parse_floating_dtype(o->dtype);
    NativeCheckpoint checkpoint;
    checkpoint.config = source.config.to_hf_json(source.hf_config, torch_dtype_name(o->dtype));
    checkpoint.metadata = {{"converted_from", source.path.string()},
                           {"source_format", source.kind == ModelSource::Kind::HuggingFace ? "hf" : "native"},
                           {"writer", "dijiang 0.1.0"}};
    for (const auto& view : layout.views()) {
      const Tensor& tensor = source.tensors.at(view.name);
      checkpoint.tensors.emplace(view.name, tensor.dtype() == dtype ? tensor : tensor.to(dtype));
    }
    if (o->shards > 0)
      write_native_checkpoint_directory(o->to, checkpoint, o->shards);
    else
      write_native_checkpoint(o->to, checkpoint);
    spdlog::info("wrote {} ({} tensors, {} parameters, {})", o->to, checkpoint.tensors.size(),
                 source.config.parameter_count(), o->dtype);
  });
}

}  // namespace dj::cli
