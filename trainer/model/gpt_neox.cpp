// The CPU instantiations of the GPT-NeoX model (gpt_neox_impl.h).
#include "trainer/model/gpt_neox.h"

#include "trainer/model/gpt_neox_impl.h"

namespace dj {

cpu::DecayForm parse_decay_form(const std::string& name, const std::string& source) {
  if (name == "parallel") return cpu::DecayForm::Parallel;
  if (name == "chunkwise") return cpu::DecayForm::Chunkwise;
  if (name == "recurrent") return cpu::DecayForm::Recurrent;
  fail("{}: unknown DiJiang attention form '{}': expected parallel, chunkwise or recurrent", source, name);
}

template class GPTNeoXModel<CpuOps<float>>;
template class GPTNeoXModel<CpuOps<double>>;

}  // namespace dj
