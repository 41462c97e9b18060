#include "trainer/train/training_step.h"

#include <algorithm>
#include <cmath>

namespace dj {

StepOutcome training_step(TrainingState& state, comm::Communicator& host, const StepInput& in) {
  // {weighted loss, votes}: summed over ranks, so every rank decides alike.
  double shared[2] = {0.0, in.vote};
  state.start_step();
  for (int64_t k = 0; k < in.micro_batches; ++k) {
    const int64_t a = in.local * k / in.micro_batches, b = in.local * (k + 1) / in.micro_batches;
    const double weight = static_cast<double>(b - a) / static_cast<double>(in.global);
    // A rank with fewer sequences than micro-batches runs passes that carry no gradient.
    const int32_t* ids = b > a ? in.ids + a * in.tokens : in.ids;
    shared[0] += state.micro_batch(ids, b - a, in.tokens, weight, k == 0, k + 1 == in.micro_batches);
  }
  state.finish_gradients();
  host.all_reduce_host(shared, 2);
  StepOutcome out;
  out.loss = shared[0];
  out.votes = shared[1];
  out.norm = std::sqrt(state.gradient_sum_of_squares());
  if (!std::isfinite(out.loss) || !std::isfinite(out.norm)) return out;
  if (in.grad_clip > 0) state.clip(out.norm, in.grad_clip);
  state.update(in.step, in.lr, in.adamw);
  out.updated = true;
  return out;
}

}  // namespace dj
