// dijiang preprocess: text or jsonl documents to a GPT-NeoX indexed dataset (PREFIX.bin/.idx),
// as GPT-NeoX's tools/preprocess_data.py writes it with --append-eod.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/data/indexed_dataset.h"
#include "trainer/data/tokenizer.h"
#include "trainer/data/tokenizer_text.h"

namespace dj::cli {

namespace {
struct PreprocessOptions {
  std::vector<std::string> inputs;
  std::string format, output_prefix, tokenizer = DIJIANG_DATA_DIR "/tokenizer/tokenizer.json";
  bool append_eod = true;
};

// Counts what was written; empty documents are skipped, as preprocess_data.py's reader does.
class DocumentSink {
 public:
  DocumentSink(IndexedDatasetWriter& writer, int32_t eod, bool append_eod)
      : writer_(writer), eod_(eod), append_eod_(append_eod) {}
  void add(std::vector<int32_t> ids) {
    if (ids.empty()) {
      ++skipped_;
      return;
    }
    if (append_eod_) ids.push_back(eod_);
    writer_.add_document(ids);
    ++documents_;
    tokens_ += static_cast<int64_t>(ids.size());
  }
  int64_t documents() const { return documents_; }
  int64_t tokens() const { return tokens_; }
  int64_t skipped() const { return skipped_; }

 private:
  IndexedDatasetWriter& writer_;
  int32_t eod_;
  bool append_eod_;
  int64_t documents_ = 0, tokens_ = 0, skipped_ = 0;
};

// One document per line: the line's JSON object's "text" string. Empty lines are skipped.
void read_jsonl(const std::string& path, const Tokenizer& tokenizer, DocumentSink& sink) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open {}", path);
  int64_t number = 0;
  for (std::string line; std::getline(in, line);) {
    ++number;
    if (line.empty()) continue;
    const nlohmann::json doc = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (doc.is_discarded()) fail("{}:{}: not valid JSON", path, number);
    if (!doc.is_object() || !doc.contains("text")) fail("{}:{}: no \"text\" field", path, number);
    if (!doc["text"].is_string()) fail("{}:{}: \"text\" is not a string", path, number);
    try {
      sink.add(tokenizer.encode(doc["text"].get<std::string>()));
    } catch (const Error& e) {
      fail("{}:{}: {}", path, number, e.what());
    }
  }
  if (in.bad()) fail("cannot read {}", path);
}
}  // namespace

void register_preprocess(CLI::App& app) {
  auto* cmd = app.add_subcommand("preprocess", "tokenize documents into a GPT-NeoX indexed dataset (PREFIX.bin/.idx)");
  auto o = std::make_shared<PreprocessOptions>();
  cmd->add_option("--input", o->inputs, "input file (repeatable; read in order)")->required();
  cmd->add_option("--format", o->format, "text: each file is one document; jsonl: each line's \"text\" is one")
      ->required()
      ->check(CLI::IsMember({"text", "jsonl"}));
  cmd->add_option("--output-prefix", o->output_prefix, "writes PREFIX.bin and PREFIX.idx")->required();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the shipped GPT-NeoX tokenizer)");
  cmd->add_flag("--append-eod,!--no-append-eod", o->append_eod, "end each document with EOD (id 0; default on)");
  cmd->callback([o] {
    const Tokenizer tokenizer = Tokenizer::from_file(o->tokenizer);
    // GPT-NeoX's best-fitting dtype: u16 below 65500 ids, else i32.
    IndexedDatasetWriter writer(o->output_prefix, tokenizer.vocab_size() < 65500);
    DocumentSink sink(writer, tokenizer.end_of_document(), o->append_eod);
    for (const std::string& input : o->inputs) {
      if (o->format == "jsonl") {
        read_jsonl(input, tokenizer, sink);
      } else {
        sink.add(encode_text_file(tokenizer, input));
      }
    }
    // Nothing is written before this point, so a failure above leaves no output files.
    writer.finish();
    std::printf("wrote %s.bin and %s.idx: %lld documents, %lld tokens (%lld empty documents skipped)\n",
                o->output_prefix.c_str(), o->output_prefix.c_str(), static_cast<long long>(sink.documents()),
                static_cast<long long>(sink.tokens()), static_cast<long long>(sink.skipped()));
  });
}

}  // namespace dj::cli
