#include "trainer/train/sharded_state.h"

#include <algorithm>
#include <cstring>

#include "kernels/core/error.h"
#include "trainer/checkpoint/flat_checkpoint.h"
#include "trainer/optim/adamw.h"

namespace dj {

// A gradient reduction in flight. Stages 2-3 own the segment's gradient buffer (the send side)
// and a receive buffer for this rank's part, which is added into the slice on completion.
struct ShardedState::Pending {
  std::unique_ptr<comm::Request> request;
  std::vector<float> send, receive;
  int64_t destination = -1;  // offset in grad_slice_ to add `receive` to; -1: nothing to add
  int64_t count = 0;         // values received
  std::string what;
};

ShardedState::ShardedState(comm::Communicator& comm, int stage, std::vector<ParameterSegment> segments)
    : comm_(comm), stage_(stage), rank_(comm.rank()), world_(comm.size()), segments_(std::move(segments)) {
  if (stage < 0 || stage > 3) fail("ZeRO stage must be 0, 1, 2 or 3, got {}", stage);
  if (segments_.empty()) fail("a sharded state needs at least one parameter segment");
  total_ = segments_.back().end;
  for (const ParameterSegment& s : segments_) {
    max_segment_ = std::max(max_segment_, s.size());
    SegmentPlan plan;
    for (int r = 0; r < world_; ++r) {
      const int64_t lo = std::max(s.begin, slice_begin(r)), hi = std::min(s.end, slice_begin(r + 1));
      plan.counts.push_back(std::max<int64_t>(0, hi - lo));
    }
    plan.owned_lo = std::clamp(owned_begin(), s.begin, s.end);
    plan.owned_hi = std::clamp(owned_end(), s.begin, s.end);
    max_owned_ = std::max(max_owned_, plan.owned_hi - plan.owned_lo);
    plans_.push_back(std::move(plan));
  }
  const int64_t slice = owned_end() - owned_begin();
  params_.resize(static_cast<size_t>(stage_ == 3 ? slice : total_));
  grads_.resize(static_cast<size_t>(stage_ <= 1 ? total_ : 0));
  grad_slice_.resize(static_cast<size_t>(stage_ >= 1 ? slice : 0));
  m_.resize(static_cast<size_t>(stage_ == 0 ? total_ : slice));
  v_.resize(m_.size());
  held_params_.resize(segments_.size());
  held_grads_.resize(segments_.size());
  account(&Memory::parameters, static_cast<int64_t>(params_.size() * sizeof(float)));
  account(&Memory::gradients, static_cast<int64_t>((grads_.size() + grad_slice_.size()) * sizeof(float)));
  account(&Memory::optimizer, static_cast<int64_t>((m_.size() + v_.size()) * sizeof(float)));
}

ShardedState::~ShardedState() = default;

// The slices of the flat checkpoints (flat_shard_range), so that a rank writes exactly its own.
int64_t ShardedState::slice_begin(int rank) const {
  return rank == world_ ? total_ : flat_shard_range(total_, rank, world_).first;
}

void ShardedState::account(int64_t Memory::*field, int64_t delta) {
  memory_.*field += delta;
  peak_.parameters = std::max(peak_.parameters, memory_.parameters);
  peak_.gradients = std::max(peak_.gradients, memory_.gradients);
  peak_.optimizer = std::max(peak_.optimizer, memory_.optimizer);
}

void ShardedState::load(const Reader& read, bool with_moments) {
  const int64_t p0 = stage_ == 3 ? owned_begin() : 0;
  read("parameters", p0, p0 + static_cast<int64_t>(params_.size()), params_.data());
  const int64_t m0 = stage_ == 0 ? 0 : owned_begin();
  if (with_moments) {
    read("optimizer.m", m0, m0 + static_cast<int64_t>(m_.size()), m_.data());
    read("optimizer.v", m0, m0 + static_cast<int64_t>(v_.size()), v_.data());
  } else {
    std::fill(m_.begin(), m_.end(), 0.0f);
    std::fill(v_.begin(), v_.end(), 0.0f);
  }
}

void ShardedState::start_step() {
  std::fill(grads_.begin(), grads_.end(), 0.0f);
  std::fill(grad_slice_.begin(), grad_slice_.end(), 0.0f);
  first_micro_batch_ = last_micro_batch_ = true;
}

// A spare buffer of `size` values from `pool`, or a new one (counted in `field`).
std::vector<float> ShardedState::take_buffer(std::vector<std::vector<float>>& pool, int64_t size,
                                             int64_t Memory::*field) {
  if (!pool.empty()) {
    std::vector<float> buffer = std::move(pool.back());
    pool.pop_back();
    return buffer;
  }
  account(field, size * static_cast<int64_t>(sizeof(float)));
  return std::vector<float>(static_cast<size_t>(size));
}

float* ShardedState::acquire_parameters(int64_t segment) {
  const auto s = static_cast<size_t>(segment);
  if (stage_ < 3) return params_.data() + segments_[s].begin;
  // Stage 3: gather the segment from its owners into a segment buffer.
  std::vector<float>& held = held_params_[s];
  if (!held.empty()) fail("segment {} parameters acquired twice", segment);
  held = take_buffer(spare_params_, max_segment_, &Memory::parameters);
  const SegmentPlan& plan = plans_[s];
  const float* send = params_.data() + (plan.owned_lo - owned_begin());
  comm_.all_gather(send, held.data(), plan.counts, "parameter all-gather");
  return held.data();
}

void ShardedState::release_parameters(int64_t segment) {
  if (stage_ < 3) return;
  const auto s = static_cast<size_t>(segment);
  spare_params_.push_back(std::move(held_params_[s]));
  held_params_[s].clear();
}

float* ShardedState::acquire_gradients(int64_t segment) {
  const auto s = static_cast<size_t>(segment);
  if (stage_ <= 1) return grads_.data() + segments_[s].begin;
  std::vector<float>& held = held_grads_[s];
  if (!held.empty()) fail("segment {} gradients acquired twice", segment);
  held = take_buffer(spare_grads_, max_segment_, &Memory::gradients);
  std::fill_n(held.begin(), segments_[s].size(), 0.0f);
  return held.data();
}

void ShardedState::release_gradients(int64_t segment) {
  const auto s = static_cast<size_t>(segment);
  const ParameterSegment& seg = segments_[s];
  const SegmentPlan& plan = plans_[s];
  auto pending = std::make_unique<Pending>();
  if (stage_ <= 1) {
    if (!last_micro_batch_) return;  // accumulate locally until the step's last micro-batch
    if (stage_ == 0) {
      pending->what = "gradient all-reduce";
      pending->request = comm_.all_reduce_async(grads_.data() + seg.begin, seg.size());
    } else {
      pending->what = "gradient reduce-scatter";
      pending->request = comm_.reduce_scatter_async(grads_.data() + seg.begin,
                                                    grad_slice_.data() + (plan.owned_lo - owned_begin()), plan.counts);
    }
  } else {
    // One segment's reduction stays in flight while the next segment's backward runs; more would
    // hold more segment buffers (an embedding-sized one each) for little gain.
    while (!pending_.empty()) complete_oldest();
    pending->what = "gradient reduce-scatter";
    pending->send = std::move(held_grads_[s]);
    held_grads_[s].clear();
    float* slice_part = grad_slice_.data() + (plan.owned_lo - owned_begin());
    if (first_micro_batch_) {
      // The slice is still zero: the reduced values land in it directly.
      pending->request = comm_.reduce_scatter_async(pending->send.data(), slice_part, plan.counts);
    } else {
      pending->receive = take_buffer(spare_receives_, max_owned_, &Memory::gradients);
      pending->destination = plan.owned_lo - owned_begin();
      pending->count = plan.owned_hi - plan.owned_lo;
      pending->request = comm_.reduce_scatter_async(pending->send.data(), pending->receive.data(), plan.counts);
    }
  }
  pending_.push_back(std::move(pending));
}

void ShardedState::complete_oldest() {
  std::unique_ptr<Pending> p = std::move(pending_.front());
  pending_.pop_front();
  comm_.wait(*p->request, p->what.c_str());
  if (p->destination >= 0) {
    float* out = grad_slice_.data() + p->destination;
    const float* in = p->receive.data();
    for (int64_t i = 0; i < p->count; ++i) out[i] += in[i];
  }
  if (!p->send.empty()) spare_grads_.push_back(std::move(p->send));
  if (!p->receive.empty()) spare_receives_.push_back(std::move(p->receive));
}

void ShardedState::finish_gradients() {
  while (!pending_.empty()) complete_oldest();
}

float* ShardedState::update_parameters() {
  return stage_ == 3 ? params_.data() : params_.data() + update_begin();
}

float* ShardedState::update_gradients() { return stage_ == 0 ? grads_.data() : grad_slice_.data(); }

double ShardedState::gradient_sum_of_squares() {
  double sum = sum_of_squares(update_gradients(), update_count());
  if (stage_ > 0) comm_.all_reduce_host(&sum, 1);
  return sum;
}

void ShardedState::finish_update() {
  if (stage_ == 0 || stage_ == 3) return;
  // Every rank's updated slice to every rank, a segment at a time (MPI counts are 32-bit).
  std::vector<std::unique_ptr<comm::Request>> requests;
  for (size_t s = 0; s < segments_.size(); ++s) {
    const SegmentPlan& plan = plans_[s];
    float* segment = params_.data() + segments_[s].begin;
    requests.push_back(comm_.all_gather_async(params_.data() + plan.owned_lo, segment, plan.counts));
  }
  for (auto& request : requests) comm_.wait(*request, "parameter all-gather");
}

const float* ShardedState::owned_parameters() const {
  return stage_ == 3 ? params_.data() : params_.data() + owned_begin();
}
const float* ShardedState::owned_m() const { return stage_ == 0 ? m_.data() + owned_begin() : m_.data(); }
const float* ShardedState::owned_v() const { return stage_ == 0 ? v_.data() + owned_begin() : v_.data(); }

}  // namespace dj
