// Choosing the next token from a model's logits: greedy (the argmax, the lowest id among equals)
// or sampled from the softmax at a temperature, restricted to the top k tokens and to the
// smallest set of most likely tokens whose probability reaches top_p (nucleus sampling). The
// random numbers come from a 64-bit Mersenne twister seeded by `seed` and are turned into uniform
// doubles and draws by this code (not by the standard library's distributions, whose output is
// implementation-defined), so a seed gives the same tokens on every machine.
#pragma once
#include <cstdint>
#include <random>
#include <vector>

namespace dj {

struct SamplingOptions {
  bool greedy = true;
  double temperature = 1.0;  // > 0
  int64_t top_k = 0;         // 0: no limit
  double top_p = 1.0;        // in (0, 1]
  uint64_t seed = 0;
};

class Sampler {
 public:
  // Checks the options (dj::Error naming the bad one).
  explicit Sampler(const SamplingOptions& options);
  // The next token of a sequence from its logits [vocab].
  int32_t next(const double* logits, int64_t vocab);

 private:
  SamplingOptions options_;
  std::mt19937_64 rng_;
  std::vector<int32_t> order_;
  std::vector<double> weights_;
};

}  // namespace dj
