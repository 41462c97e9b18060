#include "trainer/train/memory_plan.h"

#include <algorithm>

#include "kernels/core/error.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/parameters.h"

namespace dj {

namespace {

constexpr int64_t kFloat = 4, kInt = 4, kDouble = 8;
// cuBLASLt workspace of a CudaOps (kernels/cuda/ops.h, Blas::kDefaultWorkspaceBytes).
constexpr int64_t kBlasWorkspace = int64_t{32} << 20;
// Rows of logits the evaluation pass holds at once (GPTNeoXModel::evaluate's default).
constexpr int64_t kEvalLogitRows = GPTNeoX<float>::kEvalLogitRows;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Bytes of one layer's saved activations for N tokens (GPTNeoXModel::allocate_layer).
int64_t layer_bytes(const ModelConfig& c, int64_t N, int64_t act, bool training) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, H = c.num_heads;
  const bool dijiang = c.is_dijiang(), weights = dijiang && c.dijiang.feature_weights;
  int64_t values = (training ? 8 : 7) * D + 2 * F;  // input (training), ln1, q, k, v, attn, merged, ln2; gelu in/out
  if (!c.use_parallel_residual) values += D;        // mid
  if (dijiang) values += (c.has_feature_map() ? 4 : 2) * D + (weights ? 2 * D : 0);
  if (c.is_linear()) values += 2 * H * c.linear_features() + 2 * (D + H);  // sq, sk; vx, ox
  int64_t stats = 4 + (dijiang ? 2 * c.group_norm_groups() : c.is_linear() ? 0 : H);
  return N * (values * act + stats * kFloat);
}

// Training activations of a micro-batch of N tokens: every layer plus the shared scratch.
int64_t training_bytes(const ModelConfig& c, int64_t N, int64_t act) {
  const int64_t D = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const bool dijiang = c.is_dijiang();
  int64_t scratch = (11 + (dijiang ? 2 : 0) + 3) * D + F + V;  // residual and gradient scratch, qkv, nf, logits
  if (c.is_linear()) scratch += 2 * c.num_heads * c.linear_features() + 2 * (D + c.num_heads);  // dfq_x, dfk_x; dox, dvx
  return c.num_layers * layer_bytes(c, N, act, true) + N * (scratch * act + 2 * kFloat + 2 * kInt);
}

// The evaluation pass of N tokens: one layer, the residual stream twice, and a block of logits.
int64_t evaluation_bytes(const ModelConfig& c, int64_t N, int64_t act) {
  const int64_t D = c.hidden_size, V = c.vocab_size;
  return layer_bytes(c, N, act, false) + N * ((5 + 3) * D * act + 2 * kFloat + 2 * kInt) +
         std::min(N, kEvalLogitRows) * V * act;
}

}  // namespace

RankMemory plan_rank_memory(const MemoryPlanInput& in, int rank) {
  const ModelConfig& c = in.config;
  if (in.ranks < 1 || rank < 0 || rank >= in.ranks) fail("no rank {} of {}", rank, in.ranks);
  if (in.stage < 0 || in.stage > 3) fail("ZeRO stage must be 0, 1, 2 or 3, got {}", in.stage);
  const ParameterLayout layout = ParameterLayout::gpt_neox(c);
  const std::vector<ParameterSegment> segments = gpt_neox_segments(layout, c);
  const int64_t P = layout.total();
  const auto [lo, hi] = flat_shard_range(P, rank, in.ranks);
  const int64_t slice = hi - lo;
  int64_t max_segment = 0, max_owned = 0;
  for (const ParameterSegment& s : segments) {
    max_segment = std::max(max_segment, s.size());
    max_owned = std::max(max_owned, std::max<int64_t>(0, std::min(hi, s.end) - std::max(lo, s.begin)));
  }
  const bool bf16 = in.gpu && in.precision == Precision::BF16;
  const int64_t act = bf16 ? 2 : 4;
  // Segments held at once: the one in use and the next being gathered (stage 3) or reduced
  // (stages 2-3); tied embeddings keep the embedding's segment besides.
  const int64_t held = c.tie_word_embeddings ? 3 : 2;
  // This rank's micro-batches: its slice of the global batch in the same number of passes as the
  // largest slice needs (trainer.cpp).
  const int64_t G = std::max<int64_t>(in.global_batch, 1);
  const int64_t local = G * (rank + 1) / in.ranks - G * rank / in.ranks;
  const int64_t passes = std::max<int64_t>(1, ceil_div(ceil_div(G, in.ranks), in.micro_batch));
  const int64_t sequences = std::max<int64_t>(1, ceil_div(local, passes));

  RankMemory m;
  m.parameters = (in.stage < 3 ? P : slice + held * max_segment) * kFloat;
  if (bf16) m.compute_copy = (in.stage < 3 ? P : held * max_segment) * 2;
  m.gradients = (in.stage <= 1 ? P : 0) * kFloat + (in.stage >= 1 ? slice : 0) * kFloat;
  if (in.stage >= 2) m.gradients += (held * max_segment + (passes > 1 ? max_owned : 0)) * kFloat;
  const int64_t update = in.stage == 0 ? P : slice;
  m.optimizer = update * (2 * kFloat + 2);  // m, v and two byte masks
  const int64_t tokens = sequences * in.seq_len;
  m.activations = training_bytes(c, tokens, act);
  if (in.validation) m.activations += evaluation_bytes(c, in.micro_batch * (in.seq_len + 1), act);
  if (in.gpu) {
    const int64_t rotary_pairs = std::max(in.seq_len + 1, tokens) * (c.rotary_dims() / 2) * 2;
    m.workspace = kBlasWorkspace + std::max(tokens, in.micro_batch * (in.seq_len + 1)) * kDouble +
                  rotary_pairs * kDouble;
    // The softmax teacher's attention backward keeps one fp32 value per (sequence, head, token).
    if (!c.is_converted()) m.workspace += sequences * c.num_heads * in.seq_len * kFloat;
    // Head sizes above 128 (kernels/cuda/dijiang_attention.h): the feature map streams a prepared
    // copy of P (256 KB), and in bf16 the decay attention's backward, which runs in two passes over
    // 128-wide column blocks, keeps the first pass's fp32 partial sums of dfq, dfk and dv
    // (m = dv = d: 3 d fp32 values per (sequence, head, token), 12 D bytes per token).
    if (c.is_dijiang() && c.head_dim() > 128) {
      m.workspace += int64_t{256} << 10;
      if (bf16) m.workspace += tokens * 3 * c.hidden_size * kFloat;
    }
    // The baselines' decayed attention runs at m features and d + 1 value columns: above 128 the
    // bf16 backward keeps its first pass's fp32 partial sums of dfq, dfk and dv likewise.
    const int64_t m_features = c.is_linear() ? c.linear_features() : 0;
    if (c.is_linear() && bf16 && std::max(m_features, c.head_dim() + 1) > 128)
      m.workspace += tokens * c.num_heads * (2 * m_features + c.head_dim() + 1) * kFloat;
  } else if (c.is_dijiang()) {
    // The fused GroupNorm + gate backward recomputes GroupNorm into a temporary.
    m.workspace = tokens * c.hidden_size * act;
  }
  return m;
}

RankMemory plan_memory(const MemoryPlanInput& input) {
  RankMemory worst;
  for (int r = 0; r < input.ranks; ++r) {
    const RankMemory m = plan_rank_memory(input, r);
    if (r == 0 || m.total() > worst.total()) worst = m;
  }
  return worst;
}

MemoryPlanInput plan_input(const Experiment& e, const ModelConfig& config, int ranks, int stage, bool gpu) {
  MemoryPlanInput in;
  in.config = config;
  in.ranks = ranks;
  in.stage = stage;
  in.gpu = gpu;
  in.precision = e.precision;
  in.micro_batch = e.micro_batch;
  in.seq_len = e.seq_len;
  in.global_batch = e.sequences_per_step();
  in.validation = !e.valid_tokens.empty();
  return in;
}

int64_t gpu_memory_reserve(int64_t capacity_bytes) {
  // The CUDA context and library handles (about 0.6 GiB on an H100) and 3% for the caching and
  // rounding of allocations.
  return (int64_t{6} << 27) + capacity_bytes * 3 / 100;
}

std::string plan_table(const Experiment& e, const ModelConfig& config, int ranks, bool gpu, int64_t capacity) {
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  const auto gib = [](int64_t bytes) { return static_cast<double>(bytes) / kGiB; };
  std::string out = fmt::format(
      "{} ranks on {}{}, micro-batch {} x {} tokens{}; GiB per rank (the largest rank):\n", ranks,
      gpu ? "GPUs" : "CPUs", gpu ? fmt::format(" in {}", choice_name(e.precision)) : "", e.micro_batch, e.seq_len,
      capacity > 0 ? fmt::format(", {:.1f} GiB each", gib(capacity)) : "");
  out += fmt::format("{:>5} {:>10} {:>9} {:>9} {:>9} {:>11} {:>9} {:>9}  {}\n", "stage", "parameters", "bf16 copy",
                     "gradients", "optimizer", "activations", "workspace", "total", capacity > 0 ? "fits" : "");
  const int64_t usable = gpu && capacity > 0 ? capacity - gpu_memory_reserve(capacity) : capacity;
  for (int stage = 0; stage <= 3; ++stage) {
    const RankMemory m = plan_memory(plan_input(e, config, ranks, stage, gpu));
    out += fmt::format("{:>5} {:>10.2f} {:>9.2f} {:>9.2f} {:>9.2f} {:>11.2f} {:>9.2f} {:>9.2f}  {}\n", stage,
                       gib(m.parameters), gib(m.compute_copy), gib(m.gradients), gib(m.optimizer), gib(m.activations),
                       gib(m.workspace), gib(m.total()), capacity > 0 ? (m.total() <= usable ? "yes" : "no") : "");
  }
  return out;
}

}  // namespace dj
