#include "trainer/cli/dtype_option.h"

#include "kernels/core/error.h"

namespace dj::cli {

namespace {
struct Spelling {
  const char* name;
  DType dtype;
  const char* torch;
};
constexpr Spelling kSpellings[] = {{"f32", DType::F32, "float32"},
                                   {"f64", DType::F64, "float64"},
                                   {"f16", DType::F16, "float16"},
                                   {"bf16", DType::BF16, "bfloat16"}};
const Spelling& find(const std::string& name) {
  for (const auto& s : kSpellings)
    if (name == s.name) return s;
  fail("unknown dtype '{}': expected f32, f64, f16 or bf16", name);
}
}  // namespace

std::vector<std::string> floating_dtype_names() {
  std::vector<std::string> names;
  for (const auto& s : kSpellings) names.emplace_back(s.name);
  return names;
}
DType parse_floating_dtype(const std::string& name) { return find(name).dtype; }
std::string torch_dtype_name(const std::string& name) { return find(name).torch; }

}  // namespace dj::cli
