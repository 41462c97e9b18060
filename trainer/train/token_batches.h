// Fixed-length training samples cut from a token stream.
//
// Shuffled order: sample i covers tokens [i·L, i·L + L] (L + 1 tokens, L predictions, so
// consecutive samples share one boundary token and every token is predicted once per epoch), and
// each epoch visits every sample once in a permutation drawn from (seed, epoch).
// Pythia order: sample i covers tokens [i·(L+1), (i+1)·(L+1)) and samples are visited as stored,
// which on Pythia's preshuffled dataset (2049-token sequences, L = 2048) reproduces its training
// order: step s with B sequences per step uses samples [B·s, B·(s+1)).
// The cursor (epoch, position) is all the state there is, so a checkpoint that stores it resumes
// the exact sequence of batches.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "trainer/data/indexed_dataset.h"

namespace dj {

struct DataCursor {
  int64_t epoch = 0;
  int64_t position = 0;  // samples already taken in this epoch
};

class TokenBatches {
 public:
  TokenBatches(std::vector<int32_t> tokens, int64_t seq_len, uint64_t seed, bool pythia_order = false);
  // Pythia order straight from a memory-mapped indexed dataset whose sequences are the samples
  // (each exactly seq_len + 1 tokens, as in Pythia's preshuffled data): nothing is loaded up front,
  // so datasets of any size work.
  TokenBatches(IndexedDataset dataset, int64_t seq_len);

  int64_t samples() const { return samples_; }
  int64_t sample_tokens() const { return seq_len_ + 1; }
  bool streamed() const { return dataset_ != nullptr; }
  // Writes `count` samples ([count, L + 1] ids) and advances the cursor.
  void next(int32_t* out, int64_t count, DataCursor& cursor) { next_slice(out, count, 0, count, cursor); }
  // Takes the next `count` samples of the order as next() does, but writes only samples
  // [begin, end) of them ([end - begin, L + 1] ids): a rank's slice of a global batch. Every rank
  // advances its cursor past the whole batch, so batches and order do not depend on the ranks.
  void next_slice(int32_t* out, int64_t count, int64_t begin, int64_t end, DataCursor& cursor);

 private:
  void shuffle_for(int64_t epoch);

  std::vector<int32_t> tokens_;
  std::unique_ptr<IndexedDataset> dataset_;
  int64_t seq_len_, stride_, samples_;
  uint64_t seed_;
  bool pythia_order_;
  int64_t order_epoch_ = -1;
  std::vector<int64_t> order_;
};

}  // namespace dj
