// Fixed-length training samples cut from a token stream, visited in a seeded order.
//
// Sample i covers tokens [i·L, i·L + L] (L + 1 tokens, L predictions; consecutive samples share
// one boundary token, as Pythia's 2049-token samples do). Each epoch visits every sample once in a
// permutation drawn from (seed, epoch); the cursor (epoch, position) is all the state there is, so
// a checkpoint that stores it resumes the exact sequence of batches.
#pragma once
#include <cstdint>
#include <vector>

namespace dj {

struct DataCursor {
  int64_t epoch = 0;
  int64_t position = 0;  // samples already taken in this epoch
};

class TokenBatches {
 public:
  TokenBatches(std::vector<int32_t> tokens, int64_t seq_len, uint64_t seed);

  int64_t samples() const { return samples_; }
  int64_t sample_tokens() const { return seq_len_ + 1; }
  // Writes `count` samples ([count, L + 1] ids) and advances the cursor.
  void next(int32_t* out, int64_t count, DataCursor& cursor);

 private:
  void shuffle_for(int64_t epoch);

  std::vector<int32_t> tokens_;
  int64_t seq_len_, samples_;
  uint64_t seed_;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace dj
