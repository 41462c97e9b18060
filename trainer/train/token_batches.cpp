#include "trainer/train/token_batches.h"

#include <algorithm>

#include "kernels/core/error.h"
#include "kernels/core/random.h"

namespace dj {

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
  SplitMix64 rng(seed_ ^ (static_cast<uint64_t>(epoch) * 0xD1B54A32D192ED03ull));
  rng.shuffle(order_.data(), samples_);
}

void TokenBatches::next_slice(int32_t* out, int64_t count, int64_t begin, int64_t end, DataCursor& cursor) {
  if (begin < 0 || begin > end || end > count) fail("batch slice [{}, {}) is not within {} samples", begin, end, count);
  for (int64_t b = 0; b < count; ++b) {
    if (cursor.position >= samples_) {
      ++cursor.epoch;
      cursor.position = 0;
    }
    if (order_epoch_ != cursor.epoch) shuffle_for(cursor.epoch);
    const int64_t sample = order_[static_cast<size_t>(cursor.position++)];
    if (b < begin || b >= end) continue;
    int32_t* destination = out + (b - begin) * (seq_len_ + 1);
    if (dataset_) {
      const std::vector<int32_t> sequence = dataset_->sequence(sample);
      if (static_cast<int64_t>(sequence.size()) != seq_len_ + 1)
        fail("data.order pythia: sequence {} has {} tokens, samples of seq_len + 1 = {} are needed", sample,
             sequence.size(), seq_len_ + 1);
      std::copy(sequence.begin(), sequence.end(), destination);
      continue;
    }
    const int32_t* first = tokens_.data() + sample * stride_;
    std::copy(first, first + seq_len_ + 1, destination);
  }
}

}  // namespace dj
