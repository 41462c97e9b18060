// The CUDA instantiations of the GPT-NeoX model (gpt_neox_impl.h over cuda_ops.h): fp32 (the
// checked twin of the CPU model) and bf16 (training: bf16 activations and products with fp32
// accumulation, fp32 masters, gradients, statistics and DiJiang parameters).
#include "trainer/model/cuda_ops.h"
#include "trainer/model/gpt_neox_impl.h"

namespace dj {

template class GPTNeoXModel<CudaOps<float>>;
template class GPTNeoXModel<CudaOps<__nv_bfloat16>>;

}  // namespace dj
