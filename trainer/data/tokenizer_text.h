// Tokenizing a whole text file, shared by `dijiang tokenize --text` and `dijiang eval --text`.
#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

#include "trainer/data/tokenizer.h"

namespace dj {

// The ids of the file's UTF-8 content; a missing or unreadable file or invalid UTF-8 throws
// dj::Error naming the file.
std::vector<int32_t> encode_text_file(const Tokenizer& tokenizer, const std::filesystem::path& path);

}  // namespace dj
