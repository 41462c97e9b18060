// GPTNeoXModel<Ops> (gpt_neox.h): decoding (a state per sequence, prompts through the full forward, then one token at a time). Part of gpt_neox_impl.h, which includes it.
#pragma once
#include "trainer/model/gpt_neox_impl.h"

namespace dj {

template <class Ops>
int64_t GPTNeoXModel<Ops>::DecodeState::bytes() const {
  int64_t total = 0;
  for (const auto& a : keys) total += static_cast<int64_t>(a.size() * sizeof(Act));
  for (const auto& a : values) total += static_cast<int64_t>(a.size() * sizeof(Act));
  for (const auto& a : states) total += static_cast<int64_t>(a.size() * sizeof(Stat));
  return total;
}

template <class Ops>
typename GPTNeoXModel<Ops>::DecodeState GPTNeoXModel<Ops>::start_decoding(int64_t batch, int64_t capacity) const {
  if (batch < 1 || capacity < 1) fail("decoding needs a positive batch and capacity, got {} and {}", batch, capacity);
  const int64_t L = config_.num_layers, BH = batch * config_.num_heads, d = config_.head_dim();
  DecodeState state;
  state.batch = batch;
  state.capacity = capacity;
  Ops ops = ops_;
  for (int64_t l = 0; l < L; ++l) {
    if (config_.is_converted()) {
      // DiJiang: [BH, d, d]; a baseline: [BH, m, d + 1] (the ones column carries the denominator).
      const int64_t size = config_.is_linear() ? BH * config_.linear_features() * (d + 1) : BH * d * d;
      state.states.push_back(Ops::template allocate<Stat>(size));
      ops.fill_zero(state.states.back().data(), size);
    } else {
      for (auto* cache : {&state.keys, &state.values}) {
        cache->push_back(Ops::template allocate<Act>(BH * capacity * d));
        ops.fill_zero(cache->back().data(), BH * capacity * d);
      }
    }
  }
  return state;
}

template <class Ops>
void GPTNeoXModel<Ops>::copy_decoding(DecodeState& dst, const DecodeState& src) {
  if (dst.batch != src.batch || dst.capacity != src.capacity || dst.keys.size() != src.keys.size() ||
      dst.states.size() != src.states.size())
    fail("copy_decoding: states of different shapes");
  // The cache's rows hold `position` filled entries each; copying them is enough.
  const int64_t BH = src.batch * config_.num_heads, d = config_.head_dim(), row = src.capacity * d;
  for (size_t l = 0; l < src.keys.size(); ++l) {
    ops_.copy_rows(dst.keys[l].data(), row, src.keys[l].data(), row, BH, src.position * d);
    ops_.copy_rows(dst.values[l].data(), row, src.values[l].data(), row, BH, src.position * d);
  }
  for (size_t l = 0; l < src.states.size(); ++l)
    ops_.copy(dst.states[l].data(), src.states[l].data(), static_cast<int64_t>(src.states[l].size()));
  dst.position = src.position;
}

template <class Ops>
void GPTNeoXModel<Ops>::decode(DecodeState& state, const int32_t* ids, int64_t n, std::vector<double>& last_logits) {
  if (state.batch < 1) fail("decode: the decoding state was not started (start_decoding)");
  if (n < 1) fail("decode needs at least one token per sequence");
  if (!config_.is_converted() && state.position + n > state.capacity)
    fail("the key/value cache holds {} positions; {} more do not fit after {}", state.capacity, n, state.position);
  if (state.position == 0 && n > 1) {
    decode_pass(eval_, state, ids, n, &last_logits);
    return;
  }
  const int64_t B = state.batch;
  std::vector<int32_t> column(static_cast<size_t>(B));
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t b = 0; b < B; ++b) column[static_cast<size_t>(b)] = ids[b * n + t];
    decode_pass(step_, state, column.data(), 1, t + 1 == n ? &last_logits : nullptr);
  }
}

// One pass of n tokens per sequence through the trunk on `a` (one layer of activations), then the
// logits of each sequence's last row when asked for.
template <class Ops>
void GPTNeoXModel<Ops>::decode_pass(Activations& a, DecodeState& state, const int32_t* ids, int64_t n,
                                    std::vector<double>* logits) {
  const int64_t B = state.batch, D = config_.hidden_size, V = config_.vocab_size;
  prepare(a, ids, B, n, false, B);
  a.decoding = &state;
  try {
    trunk_forward(a, false);
  } catch (...) {
    a.decoding = nullptr;
    throw;
  }
  a.decoding = nullptr;
  if (logits != nullptr) {
    for (int64_t b = 0; b < B; ++b) ops_.copy(a.nd_a.data() + b * D, a.final_ln.data() + (b * n + n - 1) * D, D);
    ops_.linear_forward(a.logits.data(), a.nd_a.data(), output_embedding(), nullptr, B, D, V);
    logits->resize(static_cast<size_t>(B * V));
    ops_.download_double(logits->data(), a.logits.data(), B * V);
  }
  drop_parameters(head_segment());
  if (config_.tie_word_embeddings) drop_parameters(0);
  state.position += n;
}

}  // namespace dj
