// ZeRO data parallelism on flat buffers: the parameters, gradients and AdamW moments of one
// model, sharded across the ranks of a communicator as stage 0, 1, 2 or 3 says. Written once over
// a backend (trainer/model/cpu_ops.h): host buffers with the host communicator (MPI, or one
// process) for CpuOps<float>, device buffers with the NCCL communicator for CudaOps<T>.
//
// The flat buffer [0, P) is cut into one contiguous slice per rank, balanced to within one value
// (rank r owns flat_shard_range(P, r, N), the slices of the flat checkpoints), so no padding is
// needed: the collectives take per-rank counts. What a rank keeps between steps:
//   stage 0  parameters, gradients, m and v in full; gradients are all-reduced and every rank
//            applies the same update to everything.
//   stage 1  parameters and gradients in full; m, v and the reduced gradients of its slice.
//   stage 2  parameters in full; gradients exist only a segment at a time while the backward
//            pass fills them, reduce-scattered into the slice as each segment completes.
//   stage 3  only its slice of everything: a segment's parameters are all-gathered just before
//            the model uses them (the next segment's gather starts while the current one
//            computes) and freed after, in the forward and again in the backward pass.
// Stages 1-2 all-gather the updated slices after each step. Parameters are fp32 masters; a
// backend that computes in bf16 keeps a bf16 copy for the products: of everything at stages 0-2,
// of the gathered segment only at stage 3.
//
// Ordering. Gradient communication starts as soon as a segment's gradients are final, so it runs
// while the backward pass continues (stages 0-1 in the last micro-batch of a step, stages 2-3 in
// every micro-batch, one segment's reduction in flight). What consumes a collective's result, or
// reuses its buffers, is ordered after it with Communicator::order_after: on the host that waits
// (MPI progresses nonblocking collectives inside MPI calls, so on CPUs much of the overlap is
// nominal); with NCCL the compute stream waits on the device and the host runs ahead.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/parameters.h"
#include "trainer/optim/adamw.h"

namespace dj {

// Bytes of parameters, gradients and optimizer state a rank holds.
struct StateMemory {
  int64_t parameters = 0, gradients = 0, optimizer = 0;
  int64_t total() const { return parameters + gradients + optimizer; }
};

template <class Ops>
class ShardedState final : public ModelStorage<Ops> {
 public:
  using Base = ModelStorage<Ops>;
  using typename Base::Act;
  template <typename U>
  using Array = typename Ops::template Array<U>;

  // `comm` carries the collectives on the backend's buffers (host or NCCL); it must outlive this.
  ShardedState(comm::Communicator& comm, int stage, std::vector<ParameterSegment> segments, Ops ops = Ops());
  ~ShardedState() override;
  ShardedState(const ShardedState&) = delete;
  ShardedState& operator=(const ShardedState&) = delete;

  int stage() const { return stage_; }
  int64_t total() const { return total_; }
  int64_t slice_begin(int rank) const;
  int64_t owned_begin() const { return slice_begin(rank_); }
  int64_t owned_end() const { return slice_begin(rank_ + 1); }
  // The range this rank updates: everything in stage 0, its slice otherwise.
  int64_t update_begin() const { return stage_ == 0 ? 0 : owned_begin(); }
  int64_t update_end() const { return stage_ == 0 ? total_ : owned_end(); }
  int64_t update_count() const { return update_end() - update_begin(); }

  // Fills parameters and moments: read(dataset, begin, end, out) with dataset "parameters",
  // "optimizer.m" or "optimizer.v" writes values [begin, end) of the flat buffer into host memory.
  // Without moments they start at zero.
  using Reader = std::function<void(const std::string& dataset, int64_t begin, int64_t end, float* out)>;
  void load(const Reader& read, bool with_moments);
  // Per-value host masks over the update range (1: takes weight decay / trains).
  void set_masks(const std::vector<uint8_t>& decay, const std::vector<uint8_t>& update);

  // A step: start_step(), then per micro-batch start_micro_batch() and the model's
  // forward/backward, then finish_gradients(), gradient_sum_of_squares(), clip(), update().
  void start_step();
  void start_micro_batch(bool first, bool last) {
    first_micro_batch_ = first;
    last_micro_batch_ = last;
  }
  void finish_gradients();
  // Σ g² over every rank's gradients of the update, frozen values zeroed first.
  double gradient_sum_of_squares();
  void clip(double norm, double max_norm);
  // Zeroes both moments (a fresh AdamW for a new training stage).
  void reset_moments();
  // AdamW over the update range, then the new parameters made visible to every rank.
  void update(int64_t step, double lr, const AdamWConfig& config);

  // Calls fn(params, m, v) with host memory holding this rank's slice [owned_begin, owned_end) of
  // each buffer, for checkpoints: the buffers themselves on the host, copies of them on a device.
  void with_owned(const std::function<void(const float*, const float*, const float*)>& fn);
  // The gradients of the update range (after finish_gradients), on the backend.
  const float* update_gradients() const;

  StateMemory memory() const { return memory_; }
  StateMemory peak_memory() const { return peak_; }
  Ops& ops() { return ops_; }

  // ModelStorage
  typename Base::Parameters acquire_parameters(int64_t segment) override;
  void release_parameters(int64_t segment) override;
  void prefetch_parameters(int64_t segment) override;
  float* acquire_gradients(int64_t segment) override;
  void release_gradients(int64_t segment) override;

 private:
  static constexpr bool kSeparateCopy = !std::is_same_v<Act, float>;
  struct Pending;  // a gradient reduction in flight
  struct Gather;   // a stage-3 parameter gather, in flight or held
  struct SegmentPlan {
    std::vector<int64_t> counts;         // values of the segment each rank owns
    int64_t owned_lo = 0, owned_hi = 0;  // this rank's part, absolute offsets
  };

  template <typename U>
  Array<U> take_buffer(std::vector<Array<U>>& pool, int64_t size, int64_t StateMemory::*field);
  void account(int64_t StateMemory::*field, int64_t delta);
  void complete_oldest();
  std::unique_ptr<Gather> start_gather(int64_t segment);
  // Orders after and frees prefetched gathers that no acquire used.
  void discard_unused_gathers();
  float* update_parameters();
  float* mutable_update_gradients();

  comm::Communicator& comm_;
  Ops ops_;
  int stage_, rank_, world_;
  std::vector<ParameterSegment> segments_;
  std::vector<SegmentPlan> plans_;
  int64_t total_ = 0, max_segment_ = 0, max_owned_ = 0;  // largest segment; largest part of one this rank owns

  Array<float> params_;      // stages 0-2: all; stage 3: the slice
  Array<Act> copy_;          // bf16 backends at stages 0-2: all parameters as the products read them
  Array<float> grads_;       // stages 0-1: all
  Array<float> grad_slice_;  // stages 1-3: the reduced gradients of the slice
  Array<float> m_, v_;       // stage 0: all; stages 1-3: the slice
  Array<uint8_t> decay_, train_;                    // over the update range
  std::vector<std::pair<int64_t, int64_t>> frozen_;  // runs of untrained values in the update range
  // Stage 3: gathered (or gathering) segments; spare buffers for reuse.
  std::vector<std::unique_ptr<Gather>> gathers_;
  std::vector<Array<float>> spare_params_;
  std::vector<Array<Act>> spare_copies_;
  // Stages 2-3: segment gradient buffers while acquired, and spares.
  std::vector<Array<float>> held_grads_;
  std::vector<Array<float>> spare_grads_, spare_receives_;
  std::deque<std::unique_ptr<Pending>> pending_;
  bool first_micro_batch_ = true, last_micro_batch_ = true;
  StateMemory memory_, peak_;
};

extern template class ShardedState<CpuOps<float>>;

}  // namespace dj
