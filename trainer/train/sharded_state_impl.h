// The definitions of ShardedState<Ops> (sharded_state.h), written once for every backend. Included
// by the files that instantiate it: sharded_state.cpp (CpuOps<float>) and the CUDA training
// state (trainer/train/cuda_training.cpp).
#pragma once
#include <algorithm>
#include <cstring>

#include "kernels/core/error.h"
#include "trainer/train/sharded_state.h"

namespace dj {

// A gradient reduction in flight. Stages 2-3 own the segment's gradient buffer (the send side)
// and, after the first micro-batch, a receive buffer for this rank's part, which is added into the
// slice once the reduction has completed.
template <class Ops>
struct ShardedState<Ops>::Pending {
  std::unique_ptr<comm::Request> request;
  Array<float> send, receive;
  int64_t destination = -1;  // offset in grad_slice_ to add `receive` to; -1: nothing to add
  int64_t count = 0;         // values received
  const char* what = "";
};

// A stage-3 segment: its fp32 parameters gathered from their owners (the request is null once
// the compute that uses them has been ordered after it), and for bf16 backends their bf16 copy.
template <class Ops>
struct ShardedState<Ops>::Gather {
  std::unique_ptr<comm::Request> request;
  Array<float> values;
  Array<Act> copy;
  bool held = false;
};

template <class Ops>
ShardedState<Ops>::ShardedState(comm::Communicator& comm, int stage, std::vector<ParameterSegment> segments, Ops ops)
    : comm_(comm), ops_(std::move(ops)), stage_(stage), rank_(comm.rank()), world_(comm.size()),
      segments_(std::move(segments)) {
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
  const auto floats = [&](int64_t n, int64_t StateMemory::*field) {
    account(field, n * static_cast<int64_t>(sizeof(float)));
    Array<float> a = Ops::template allocate<float>(n);
    ops_.fill_zero(a.data(), n);
    return a;
  };
  params_ = floats(stage_ == 3 ? slice : total_, &StateMemory::parameters);
  if (kSeparateCopy && stage_ < 3) {
    copy_ = Ops::template allocate<Act>(total_);
    account(&StateMemory::parameters, total_ * static_cast<int64_t>(sizeof(Act)));
  }
  grads_ = floats(stage_ <= 1 ? total_ : 0, &StateMemory::gradients);
  grad_slice_ = floats(stage_ >= 1 ? slice : 0, &StateMemory::gradients);
  m_ = floats(stage_ == 0 ? total_ : slice, &StateMemory::optimizer);
  v_ = floats(stage_ == 0 ? total_ : slice, &StateMemory::optimizer);
  decay_ = Ops::template allocate<uint8_t>(update_count());
  train_ = Ops::template allocate<uint8_t>(update_count());
  account(&StateMemory::optimizer, 2 * update_count());
  std::vector<uint8_t> ones(static_cast<size_t>(update_count()), 1);
  ops_.upload(train_.data(), ones.data(), update_count());
  ops_.upload(decay_.data(), ones.data(), update_count());
  gathers_.resize(segments_.size());
  held_grads_.resize(segments_.size());
}

template <class Ops>
ShardedState<Ops>::~ShardedState() = default;

// The slices of the flat checkpoints (flat_shard_range), so that a rank writes exactly its own.
template <class Ops>
int64_t ShardedState<Ops>::slice_begin(int rank) const {
  return rank == world_ ? total_ : flat_shard_range(total_, rank, world_).first;
}

template <class Ops>
void ShardedState<Ops>::account(int64_t StateMemory::*field, int64_t delta) {
  memory_.*field += delta;
  peak_.parameters = std::max(peak_.parameters, memory_.parameters);
  peak_.gradients = std::max(peak_.gradients, memory_.gradients);
  peak_.optimizer = std::max(peak_.optimizer, memory_.optimizer);
}

// A spare buffer of `size` values from `pool`, or a new one (counted in `field`).
template <class Ops>
template <typename U>
auto ShardedState<Ops>::take_buffer(std::vector<Array<U>>& pool, int64_t size, int64_t StateMemory::*field)
    -> Array<U> {
  if (!pool.empty()) {
    Array<U> buffer = std::move(pool.back());
    pool.pop_back();
    return buffer;
  }
  account(field, size * static_cast<int64_t>(sizeof(U)));
  return Ops::template allocate<U>(size);
}

template <class Ops>
void ShardedState<Ops>::load(const Reader& read, bool with_moments) {
  // Staged through a host buffer of at most kLoadPieceValues values, so that loading holds the
  // state and one piece, not a second copy of a buffer.
  constexpr int64_t kLoadPieceValues = int64_t{8} << 20;
  std::vector<float> host;
  const auto fill = [&](const char* dataset, float* out, int64_t begin, int64_t count) {
    for (int64_t done = 0; done < count; done += kLoadPieceValues) {
      const int64_t n = std::min(kLoadPieceValues, count - done);
      host.resize(static_cast<size_t>(n));
      read(dataset, begin + done, begin + done + n, host.data());
      ops_.upload(out + done, host.data(), n);
    }
  };
  const int64_t p0 = stage_ == 3 ? owned_begin() : 0;
  fill("parameters", params_.data(), p0, static_cast<int64_t>(params_.size()));
  if (kSeparateCopy && stage_ < 3) ops_.to_compute(copy_.data(), params_.data(), total_);
  const int64_t m0 = stage_ == 0 ? 0 : owned_begin();
  if (with_moments) {
    fill("optimizer.m", m_.data(), m0, static_cast<int64_t>(m_.size()));
    fill("optimizer.v", v_.data(), m0, static_cast<int64_t>(v_.size()));
  } else {
    ops_.fill_zero(m_.data(), static_cast<int64_t>(m_.size()));
    ops_.fill_zero(v_.data(), static_cast<int64_t>(v_.size()));
  }
  ops_.synchronize();
}

template <class Ops>
void ShardedState<Ops>::set_masks(const std::vector<uint8_t>& decay, const std::vector<uint8_t>& update) {
  const int64_t n = update_count();
  if (static_cast<int64_t>(decay.size()) != n || static_cast<int64_t>(update.size()) != n)
    fail("optimizer masks of {} and {} values for an update range of {}", decay.size(), update.size(), n);
  ops_.upload(decay_.data(), decay.data(), n);
  ops_.upload(train_.data(), update.data(), n);
  // Frozen values are runs of whole tensors: their gradients are zeroed run by run.
  frozen_.clear();
  for (int64_t i = 0; i < n;) {
    if (update[static_cast<size_t>(i)]) {
      ++i;
      continue;
    }
    int64_t j = i;
    while (j < n && !update[static_cast<size_t>(j)]) ++j;
    frozen_.push_back({i, j});
    i = j;
  }
  ops_.synchronize();
}

template <class Ops>
void ShardedState<Ops>::start_step() {
  ops_.fill_zero(grads_.data(), static_cast<int64_t>(grads_.size()));
  ops_.fill_zero(grad_slice_.data(), static_cast<int64_t>(grad_slice_.size()));
  first_micro_batch_ = last_micro_batch_ = true;
}

template <class Ops>
auto ShardedState<Ops>::start_gather(int64_t segment) -> std::unique_ptr<Gather> {
  auto gather = std::make_unique<Gather>();
  gather->values = take_buffer(spare_params_, max_segment_, &StateMemory::parameters);
  if constexpr (kSeparateCopy) gather->copy = take_buffer(spare_copies_, max_segment_, &StateMemory::parameters);
  const SegmentPlan& plan = plans_[static_cast<size_t>(segment)];
  const float* send = params_.data() + (plan.owned_lo - owned_begin());
  gather->request = comm_.all_gather_async(send, gather->values.data(), plan.counts);
  return gather;
}

template <class Ops>
auto ShardedState<Ops>::acquire_parameters(int64_t segment) -> typename Base::Parameters {
  const auto s = static_cast<size_t>(segment);
  if (stage_ < 3) {
    const int64_t begin = segments_[s].begin;
    if constexpr (kSeparateCopy)
      return {params_.data() + begin, copy_.data() + begin};
    else
      return {params_.data() + begin, params_.data() + begin};
  }
  // Stage 3: the segment gathered from its owners (started by a prefetch, or now).
  std::unique_ptr<Gather>& gather = gathers_[s];
  if (gather && gather->held) fail("segment {} parameters acquired twice", segment);
  if (!gather) gather = start_gather(segment);
  if (gather->request) {
    comm_.order_after(*gather->request, "parameter all-gather");
    gather->request.reset();
    if constexpr (kSeparateCopy) ops_.to_compute(gather->copy.data(), gather->values.data(), segments_[s].size());
  }
  gather->held = true;
  if constexpr (kSeparateCopy)
    return {gather->values.data(), gather->copy.data()};
  else
    return {gather->values.data(), gather->values.data()};
}

template <class Ops>
void ShardedState<Ops>::prefetch_parameters(int64_t segment) {
  if (stage_ < 3) return;
  std::unique_ptr<Gather>& gather = gathers_[static_cast<size_t>(segment)];
  if (!gather) gather = start_gather(segment);
}

template <class Ops>
void ShardedState<Ops>::release_parameters(int64_t segment) {
  if (stage_ < 3) return;
  std::unique_ptr<Gather>& gather = gathers_[static_cast<size_t>(segment)];
  if (!gather || !gather->held) fail("segment {} parameters released without being acquired", segment);
  spare_params_.push_back(std::move(gather->values));
  if constexpr (kSeparateCopy) spare_copies_.push_back(std::move(gather->copy));
  gather.reset();
}

template <class Ops>
float* ShardedState<Ops>::acquire_gradients(int64_t segment) {
  const auto s = static_cast<size_t>(segment);
  if (stage_ <= 1) return grads_.data() + segments_[s].begin;
  Array<float>& held = held_grads_[s];
  if (held.size() != 0) fail("segment {} gradients acquired twice", segment);
  held = take_buffer(spare_grads_, max_segment_, &StateMemory::gradients);
  ops_.fill_zero(held.data(), segments_[s].size());
  return held.data();
}

template <class Ops>
void ShardedState<Ops>::release_gradients(int64_t segment) {
  const auto s = static_cast<size_t>(segment);
  const ParameterSegment& seg = segments_[s];
  const SegmentPlan& plan = plans_[s];
  auto pending = std::make_unique<Pending>();
  if (stage_ <= 1 && !last_micro_batch_) return;  // accumulate locally until the step's last micro-batch
  // One segment's reduction stays in flight while the next segment's backward runs: more would
  // hold more buffers (at stages 2-3 an embedding-sized segment buffer each; with MPI, the
  // temporaries of its nonblocking collectives) for little gain.
  while (!pending_.empty()) complete_oldest();
  if (stage_ <= 1) {
    if (stage_ == 0) {
      pending->what = "gradient all-reduce";
      pending->request = comm_.all_reduce_async(grads_.data() + seg.begin, seg.size());
    } else {
      pending->what = "gradient reduce-scatter";
      pending->request = comm_.reduce_scatter_async(grads_.data() + seg.begin,
                                                    grad_slice_.data() + (plan.owned_lo - owned_begin()), plan.counts);
    }
  } else {
    pending->what = "gradient reduce-scatter";
    pending->send = std::move(held_grads_[s]);
    held_grads_[s] = Array<float>();
    float* slice_part = grad_slice_.data() + (plan.owned_lo - owned_begin());
    if (first_micro_batch_) {
      // The slice is still zero: the reduced values land in it directly.
      pending->request = comm_.reduce_scatter_async(pending->send.data(), slice_part, plan.counts);
    } else {
      pending->receive = take_buffer(spare_receives_, max_owned_, &StateMemory::gradients);
      pending->destination = plan.owned_lo - owned_begin();
      pending->count = plan.owned_hi - plan.owned_lo;
      pending->request = comm_.reduce_scatter_async(pending->send.data(), pending->receive.data(), plan.counts);
    }
  }
  pending_.push_back(std::move(pending));
}

template <class Ops>
void ShardedState<Ops>::complete_oldest() {
  std::unique_ptr<Pending> p = std::move(pending_.front());
  pending_.pop_front();
  comm_.order_after(*p->request, p->what);
  if (p->destination >= 0) ops_.accumulate(grad_slice_.data() + p->destination, p->receive.data(), p->count);
  if (p->send.size() != 0) spare_grads_.push_back(std::move(p->send));
  if (p->receive.size() != 0) spare_receives_.push_back(std::move(p->receive));
}

template <class Ops>
void ShardedState<Ops>::finish_gradients() {
  while (!pending_.empty()) complete_oldest();
}

template <class Ops>
float* ShardedState<Ops>::update_parameters() {
  return stage_ == 3 ? params_.data() : params_.data() + update_begin();
}

template <class Ops>
float* ShardedState<Ops>::mutable_update_gradients() {
  return stage_ == 0 ? grads_.data() : grad_slice_.data();
}

template <class Ops>
const float* ShardedState<Ops>::update_gradients() const {
  return stage_ == 0 ? grads_.data() : grad_slice_.data();
}

template <class Ops>
double ShardedState<Ops>::gradient_sum_of_squares() {
  float* grads = mutable_update_gradients();
  for (const auto& [begin, end] : frozen_) ops_.fill_zero(grads + begin, end - begin);
  double sum = ops_.sum_of_squares(grads, update_count());
  if (stage_ > 0) comm_.all_reduce_host(&sum, 1);
  return sum;
}

template <class Ops>
void ShardedState<Ops>::clip(double norm, double max_norm) {
  ops_.clip_by_global_norm(mutable_update_gradients(), update_count(), norm, max_norm);
}

template <class Ops>
void ShardedState<Ops>::discard_unused_gathers() {
  for (size_t s = 0; s < gathers_.size(); ++s) {
    std::unique_ptr<Gather>& gather = gathers_[s];
    if (!gather) continue;
    if (gather->held) fail("segment {} parameters are still acquired", s);
    if (gather->request) comm_.order_after(*gather->request, "parameter all-gather");
    spare_params_.push_back(std::move(gather->values));
    if constexpr (kSeparateCopy) spare_copies_.push_back(std::move(gather->copy));
    gather.reset();
  }
}

template <class Ops>
void ShardedState<Ops>::reset_moments() {
  ops_.fill_zero(m_.data(), static_cast<int64_t>(m_.size()));
  ops_.fill_zero(v_.data(), static_cast<int64_t>(v_.size()));
}

template <class Ops>
void ShardedState<Ops>::update(int64_t step, double lr, const AdamWConfig& config) {
  // A gather still in flight reads the slice the update writes.
  discard_unused_gathers();
  ops_.adamw_step(update_parameters(), m_.data(), v_.data(), mutable_update_gradients(), decay_.data(), train_.data(),
                  update_count(), step, lr, config);
  if (stage_ == 1 || stage_ == 2) {
    // Every rank's updated slice to every rank, a segment at a time (MPI counts are 32-bit).
    std::vector<std::unique_ptr<comm::Request>> requests;
    for (size_t s = 0; s < segments_.size(); ++s) {
      const SegmentPlan& plan = plans_[s];
      float* segment = params_.data() + segments_[s].begin;
      requests.push_back(comm_.all_gather_async(params_.data() + plan.owned_lo, segment, plan.counts));
    }
    for (auto& request : requests) comm_.order_after(*request, "parameter all-gather");
  }
  if (kSeparateCopy && stage_ < 3) ops_.to_compute(copy_.data(), params_.data(), total_);
}

template <class Ops>
void ShardedState<Ops>::with_owned(const std::function<void(const float*, const float*, const float*)>& fn) {
  const int64_t n = owned_end() - owned_begin();
  const int64_t p0 = stage_ == 3 ? 0 : owned_begin(), m0 = stage_ == 0 ? owned_begin() : 0;
  if constexpr (!Ops::kOnDevice) {
    fn(params_.data() + p0, m_.data() + m0, v_.data() + m0);
  } else {
    std::vector<float> params(static_cast<size_t>(n)), m(params.size()), v(params.size());
    ops_.download(params.data(), params_.data() + p0, n);
    ops_.download(m.data(), m_.data() + m0, n);
    ops_.download(v.data(), v_.data() + m0, n);
    fn(params.data(), m.data(), v.data());
  }
}

}  // namespace dj
