#include "trainer/train/token_batches.h"

#include <algorithm>

#include "kernels/core/error.h"

namespace dj {

namespace {
// SplitMix64 (fixed by its definition, unlike the standard distributions) drives the shuffle.
uint64_t splitmix(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
}  // namespace

TokenBatches::TokenBatches(std::vector<int32_t> tokens, int64_t seq_len, uint64_t seed, bool pythia_order)
    : tokens_(std::move(tokens)),
      seq_len_(seq_len),
      stride_(pythia_order ? seq_len + 1 : seq_len),
      seed_(seed),
      pythia_order_(pythia_order) {
  const auto n = static_cast<int64_t>(tokens_.size());
  samples_ = n > seq_len_ ? (n - 1 - seq_len_) / stride_ + 1 : 0;
  if (samples_ == 0)
    fail("{} tokens are too few for one sample of {} + 1 tokens", n, seq_len_);
}

TokenBatches::TokenBatches(IndexedDataset dataset, int64_t seq_len)
    : dataset_(std::make_unique<IndexedDataset>(std::move(dataset))),
      seq_len_(seq_len),
      stride_(seq_len + 1),
      samples_(dataset_->sequences()),
      seed_(0),
      pythia_order_(true) {
  if (samples_ == 0) fail("the indexed dataset holds no sequences");
}

void TokenBatches::shuffle_for(int64_t epoch) {
  order_.resize(static_cast<size_t>(samples_));
  for (int64_t i = 0; i < samples_; ++i) order_[static_cast<size_t>(i)] = i;
  order_epoch_ = epoch;
  if (pythia_order_) return;
  uint64_t state = seed_ ^ (static_cast<uint64_t>(epoch) * 0xD1B54A32D192ED03ull);
  for (int64_t i = samples_ - 1; i > 0; --i) {
    const uint64_t bound = static_cast<uint64_t>(i + 1);
    const uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do x = splitmix(state);
    while (x >= limit);
    std::swap(order_[static_cast<size_t>(i)], order_[x % bound]);
  }
}

void TokenBatches::next(int32_t* out, int64_t count, DataCursor& cursor) {
  for (int64_t b = 0; b < count; ++b) {
    if (cursor.position >= samples_) {
      ++cursor.epoch;
      cursor.position = 0;
    }
    if (order_epoch_ != cursor.epoch) shuffle_for(cursor.epoch);
    const int64_t sample = order_[static_cast<size_t>(cursor.position++)];
    int32_t* destination = out + b * (seq_len_ + 1);
    if (dataset_) {
      const std::vector<int32_t> sequence = dataset_->sequence(sample);
      if (static_cast<int64_t>(sequence.size()) != seq_len_ + 1)
        fail("data.order pythia: sequence {} has {} tokens, samples of seq_len + 1 = {} are needed", sample,
             sequence.size(), seq_len_ + 1);
      std::copy(sequence.begin(), sequence.end(), destination);
      continue;
    }
    const int32_t* begin = tokens_.data() + sample * stride_;
    std::copy(begin, begin + seq_len_ + 1, destination);
  }
}

}  // namespace dj
