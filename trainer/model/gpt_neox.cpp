// The CPU instantiations of the GPT-NeoX model (gpt_neox_impl.h).
#include "trainer/model/gpt_neox.h"

#include "trainer/model/gpt_neox_impl.h"

namespace dj {

template class GPTNeoXModel<CpuOps<float>>;
template class GPTNeoXModel<CpuOps<double>>;

}  // namespace dj
