// ZeRO data parallelism on flat buffers: the parameters, gradients and AdamW moments of one
// model, sharded across the ranks of a communicator as stage 0, 1, 2 or 3 says.
//
// The flat buffer [0, P) is cut into one contiguous slice per rank, balanced to within one value
// (rank r owns [P·r/N, P·(r+1)/N), the slices of the flat checkpoints), so no padding is
// needed: the collectives take per-rank counts. What a rank keeps between steps:
//   stage 0  parameters, gradients, m and v in full; gradients are all-reduced and every rank
//            applies the same update to everything.
//   stage 1  parameters and gradients in full; m, v and the reduced gradients of its slice.
//   stage 2  parameters in full; gradients exist only a segment at a time while the backward
//            pass fills them, reduce-scattered into the slice as each segment completes.
//   stage 3  only its slice of everything: a segment's parameters are all-gathered just before
//            the model uses them and freed after (forward and again in the backward pass).
// Stages 1-2 all-gather the updated slices after each step. Gradient communication starts as
// soon as a segment's gradients are final, so it runs while the backward pass continues
// (stages 0-1 in the last micro-batch of a step, stages 2-3 in every micro-batch, one segment in
// flight). MPI progresses nonblocking collectives inside MPI calls, so on CPUs much of that
// overlap is nominal.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "comm/communicator.h"
#include "trainer/model/parameters.h"

namespace dj {

class ShardedState final : public SegmentStorage<float> {
 public:
  ShardedState(comm::Communicator& comm, int stage, std::vector<ParameterSegment> segments);
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
  // "optimizer.m" or "optimizer.v" writes values [begin, end) of the flat buffer. Without
  // moments they start at zero.
  using Reader = std::function<void(const std::string& dataset, int64_t begin, int64_t end, float* out)>;
  void load(const Reader& read, bool with_moments);

  // A step: start_step(), then per micro-batch start_micro_batch() and the model's
  // forward/backward, then finish_gradients(); the update works on update_*() and m()/v(), then
  // finish_update() makes the new parameters visible to every rank.
  void start_step();
  void start_micro_batch(bool first, bool last) {
    first_micro_batch_ = first;
    last_micro_batch_ = last;
  }
  void finish_gradients();
  float* update_parameters();
  float* update_gradients();
  float* m() { return m_.data(); }
  float* v() { return v_.data(); }
  void finish_update();

  // Σ g² over every rank's gradients of the update (after finish_gradients).
  double gradient_sum_of_squares();

  // This rank's slice [owned_begin, owned_end) of each buffer, for checkpoints.
  const float* owned_parameters() const;
  const float* owned_m() const;
  const float* owned_v() const;

  // Bytes of parameters, gradients and optimizer state this rank holds: now and at most.
  struct Memory {
    int64_t parameters = 0, gradients = 0, optimizer = 0;
    int64_t total() const { return parameters + gradients + optimizer; }
  };
  Memory memory() const { return memory_; }
  Memory peak_memory() const { return peak_; }

  // SegmentStorage
  float* acquire_parameters(int64_t segment) override;
  void release_parameters(int64_t segment) override;
  float* acquire_gradients(int64_t segment) override;
  void release_gradients(int64_t segment) override;

 private:
  struct Pending;  // a gradient reduction in flight
  struct SegmentPlan {
    std::vector<int64_t> counts;  // values of the segment each rank owns
    int64_t owned_lo = 0, owned_hi = 0;  // this rank's part, absolute offsets
  };

  std::vector<float> take_buffer(std::vector<std::vector<float>>& pool, int64_t size, int64_t Memory::*field);
  void complete_oldest();
  void account(int64_t Memory::*field, int64_t delta);

  comm::Communicator& comm_;
  int stage_, rank_, world_;
  std::vector<ParameterSegment> segments_;
  std::vector<SegmentPlan> plans_;
  int64_t total_ = 0, max_segment_ = 0, max_owned_ = 0;  // largest segment; largest part of one this rank owns

  std::vector<float> params_;       // stages 0-2: all; stage 3: the slice
  std::vector<float> grads_;        // stages 0-1: all
  std::vector<float> grad_slice_;   // stages 1-3: the reduced gradients of the slice
  std::vector<float> m_, v_;        // stage 0: all; stages 1-3: the slice
  // Stages 2-3: segment buffers while acquired (indexed by segment) and spare ones for reuse.
  std::vector<std::vector<float>> held_params_, held_grads_;
  std::vector<std::vector<float>> spare_params_, spare_grads_, spare_receives_;
  std::deque<std::unique_ptr<Pending>> pending_;
  bool first_micro_batch_ = true, last_micro_batch_ = true;
  Memory memory_, peak_;
};

}  // namespace dj
