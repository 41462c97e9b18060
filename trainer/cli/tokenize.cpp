// dijiang tokenize: text to GPT-NeoX token ids (printed or written as .npy), or ids back to text.
#include <cstdio>
#include <sstream>

#include "kernels/core/error.h"
#include "trainer/cli/commands.h"
#include "trainer/data/npy.h"
#include "trainer/data/tokenizer.h"
#include "trainer/data/tokenizer_text.h"

namespace dj::cli {

namespace {
struct TokenizeOptions {
  std::string tokenizer = DIJIANG_DATA_DIR "/tokenizer/tokenizer.json", text, string, out;
  bool decode = false;
};

// Space-separated decimal ids, as `dijiang tokenize` prints them.
std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> ids;
  std::istringstream in(s);
  for (std::string word; in >> word;) {
    size_t used = 0;
    long long id = -1;
    try {
      id = std::stoll(word, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != word.size() || id < 0 || id > INT32_MAX) fail("--decode: '{}' is not a token id", word);
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}
}  // namespace

void register_tokenize(CLI::App& app) {
  auto* cmd = app.add_subcommand("tokenize", "GPT-NeoX tokenizer: text to token ids, or ids back to text (--decode)");
  auto o = std::make_shared<TokenizeOptions>();
  cmd->add_option("--tokenizer", o->tokenizer, "tokenizer.json (default: the shipped GPT-NeoX tokenizer)");
  auto* text = cmd->add_option("--text", o->text, "UTF-8 text file (with --decode: a .npy of ids)");
  auto* string = cmd->add_option("--string", o->string, "the text itself (with --decode: space-separated ids)");
  text->excludes(string);
  cmd->add_option("--out", o->out, "write the ids to this 1-D .npy file instead of printing them");
  cmd->add_flag("--decode", o->decode, "turn ids back into text");
  cmd->callback([o, text, string] {
    // Counted rather than tested for emptiness: --string "" is valid input (no tokens).
    if (text->count() == 0 && string->count() == 0) fail("tokenize needs --text FILE or --string S");
    const Tokenizer tokenizer = Tokenizer::from_file(o->tokenizer);
    if (o->decode) {
      if (!o->out.empty()) fail("--out applies to encoding, not --decode");
      const std::vector<int32_t> ids = text->count() ? read_npy_tokens(o->text) : parse_ids(o->string);
      const std::string decoded = tokenizer.decode(ids);
      std::fwrite(decoded.data(), 1, decoded.size(), stdout);
      std::fputc('\n', stdout);
      return;
    }
    const std::vector<int32_t> ids = text->count() ? encode_text_file(tokenizer, o->text) : tokenizer.encode(o->string);
    if (!o->out.empty()) {
      write_npy_tokens(o->out, ids);
      return;
    }
    std::string line;
    for (const int32_t id : ids) line += (line.empty() ? "" : " ") + std::to_string(id);
    std::printf("%s\n", line.c_str());
  });
}

}  // namespace dj::cli
