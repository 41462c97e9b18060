// The CPU instantiation of the ZeRO training state (sharded_state_impl.h).
#include "trainer/train/sharded_state.h"

#include "trainer/train/sharded_state_impl.h"

namespace dj {

template class ShardedState<CpuOps<float>>;

}  // namespace dj
