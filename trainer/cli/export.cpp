// dijiang export: a model as a Hugging Face directory (model.safetensors, config.json,
// tokenizer.json) that transformers' GPTNeoXForCausalLM loads as it is.
#include <spdlog/spdlog.h>

#include <fstream>

#include "kernels/core/error.h"
#include "trainer/checkpoint/atomic_write.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/cli/commands.h"
#include "trainer/cli/dtype_option.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/source.h"
#include "trainer/train/resources.h"

namespace dj::cli {

namespace fs = std::filesystem;

namespace {
struct ExportOptions {
  std::string from, to, format = "hf", dtype = "f32", tokenizer;
  bool force = false;
};

// --tokenizer, else the source directory's own, else the GPT-NeoX tokenizer shipped in data/.
fs::path find_tokenizer(const ExportOptions& o, const StoredModelSource& source) {
  if (!o.tokenizer.empty()) {
    if (!fs::is_regular_file(o.tokenizer)) fail("--tokenizer {}: no such file", o.tokenizer);
    return o.tokenizer;
  }
  if (source.kind == SourceKind::HuggingFace && fs::is_regular_file(source.path / "tokenizer.json"))
    return source.path / "tokenizer.json";
  const fs::path shipped = fs::path(DIJIANG_DATA_DIR) / "tokenizer" / "tokenizer.json";
  if (fs::is_regular_file(shipped)) return shipped;
  fail("no tokenizer.json to export: pass --tokenizer PATH");
}
}  // namespace

void register_export(CLI::App& app) {
  auto* cmd = app.add_subcommand("export", "write a model for other tools (--format hf: Hugging Face directory)");
  auto o = std::make_shared<ExportOptions>();
  cmd->add_option("--from", o->from, "native checkpoint or Hugging Face directory")->required();
  cmd->add_option("--to", o->to, "output directory")->required();
  cmd->add_option("--format", o->format, "hf")->required()->check(CLI::IsMember({"hf"}));
  cmd->add_option("--dtype", o->dtype, "stored dtype: f32 (default), f64, f16 or bf16")
      ->check(CLI::IsMember(floating_dtype_names()));
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json to place beside the weights");
  cmd->add_flag("--force", o->force, "replace an existing output directory");
  cmd->callback([o] {
    // Streamed: one tensor is read, converted and written at a time.
    const StoredModelSource source = open_model_source(o->from);
    const DType dtype = parse_floating_dtype(o->dtype);
    if (source.config.is_linear())
      fail("{} has {} attention, which neither Hugging Face nor the reference DiJiang code can load: keep the "
           "native checkpoint", o->from, source.config.attention_name());
    const TensorPlan validated = validated_plan(source, dtype);
    // DiJiang models are written in the reference modeling code's layout (docs/method.md, section 5).
    const TensorPlan tensors =
        source.config.is_dijiang() ? export_interchange(validated, source.config, dtype) : validated;
    const fs::path tokenizer = find_tokenizer(*o, source);
    const nlohmann::json config = source.config.to_hf_json(source.hf_config, torch_dtype_name(o->dtype));
    // Refused without --force, with its own message so that the user learns about the flag.
    const auto may_replace = [&](const fs::path& existing) {
      if (!o->force)
        fail("{}: directory exists and is not empty (pass --force to replace it)", existing.string());
      return true;
    };
    write_directory_atomically(o->to, may_replace, [&](const fs::path& dir) {
      write_planned_safetensors(dir / "model.safetensors", tensors, {{"format", "pt"}});
      std::ofstream out(dir / "config.json");
      out << config.dump(2) << "\n";
      if (!out) fail("{}: cannot write config.json", o->to);
      out.close();
      fs::copy_file(tokenizer, dir / "tokenizer.json");
    });
    spdlog::info("wrote {} (model.safetensors {}, config.json, tokenizer.json from {}; peak RSS {:.1f} MB)", o->to,
                 o->dtype, tokenizer.string(), static_cast<double>(peak_resident_bytes()) / 1e6);
  });
}

}  // namespace dj::cli
