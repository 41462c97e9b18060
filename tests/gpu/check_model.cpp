// The whole model on the GPU: GPTNeoXModel<CudaOps<T>> against the CPU model (GPTNeoX<double>, the
// reference) on small configs covering both residual modes, tied embeddings, softmax and DiJiang
// attention (with feature weights and a learnable decay): the loss and every parameter gradient,
// in fp32 and in bf16, and the evaluation pass against the CPU's; the attention-transfer pass; the
// same at head size 256, and
// the refusal of a larger one. Then one training step of a
// 410M-shaped DiJiang model at sequence 2048 in bf16 through the trainer's state (ZeRO stage 0 on
// one GPU): forward, backward, gradient norm and AdamW on the device, in tokens/s and MFU.
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "check.h"
#include "model_values.h"
#include "comm/single_communicator.h"
#include "kernels/core/error.h"
#include "kernels/cpu/dijiang.h"
#include "trainer/model/cuda_ops.h"
#include "trainer/model/gpt_neox.h"
#include "trainer/model/parameters.h"
#include "trainer/train/sharded_training.h"

namespace dj::gpucheck {
namespace {

ModelConfig small_config(bool parallel, bool tied, bool dijiang) {
  ModelConfig c;
  c.vocab_size = 97;
  c.hidden_size = 64;
  c.num_layers = 2;
  c.num_heads = 4;
  c.intermediate_size = 256;
  c.rotary_pct = 0.25;
  c.rotary_emb_base = 10000.0;
  c.use_parallel_residual = parallel;
  c.tie_word_embeddings = tied;
  c.hidden_act = parallel ? "gelu" : "gelu_new";
  if (dijiang) {
    c.attention = AttentionKind::DiJiang;
    c.dijiang.chunk = 16;
    c.dijiang.feature_weights = true;
    c.dijiang.learnable_decay = true;
  }
  return c;
}

template <typename T>
void compare_model(Context& ctx, const std::string& name, const ModelConfig& config, double loss_threshold,
                   double grad_threshold) {
  GPTNeoX<double> reference(config);
  reference.parameters() = model_parameters(reference.layout(), config, ctx.rng);
  const int64_t batch = 3, seq = 37;  // seq: two chunks and a tail
  std::vector<int32_t> ids(static_cast<size_t>(batch * seq));
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  for (auto& id : ids) id = token(ctx.rng);

  reference.zero_gradients();
  const double expected_loss = reference.forward(ids.data(), batch, seq, true, 0.5);
  reference.backward();

  GPTNeoXModel<CudaOps<T>> model(config, CudaOps<T>(ctx.stream));
  std::vector<float> params(reference.parameters().begin(), reference.parameters().end());
  model.ops().upload(model.parameters().data(), params.data(), static_cast<int64_t>(params.size()));
  model.parameters_changed();
  // Poisoned gradients must be cleared by zero_gradients; a gradient never written stays NaN.
  model.zero_gradients();
  ctx.poison(model.gradients().data(), params.size() * sizeof(float));
  model.zero_gradients();
  const double loss = model.forward(ids.data(), batch, seq, true, 0.5);
  model.backward();
  ctx.sync(name.c_str());
  ctx.compare(name + " loss", std::vector<double>{loss}, std::vector<double>{expected_loss}, loss_threshold);
  std::vector<float> grads(params.size());
  model.ops().download(grads.data(), model.gradients().data(), static_cast<int64_t>(grads.size()));
  for (const auto& view : reference.layout().views()) {
    if (!view.trainable) continue;
    std::vector<double> got(static_cast<size_t>(view.numel())), want(got.size());
    for (int64_t i = 0; i < view.numel(); ++i) {
      got[static_cast<size_t>(i)] = grads[static_cast<size_t>(view.offset + i)];
      want[static_cast<size_t>(i)] = reference.gradients()[static_cast<size_t>(view.offset + i)];
    }
    ctx.compare(name + " d" + view.name, got, want, grad_threshold);
  }
  // The evaluation pass (one layer of activations, logits in blocks of 7 rows) gives the loss sum
  // of the training forward.
  const LossSum expected = reference.forward_loss_sum(ids.data(), batch, seq);
  const LossSum evaluated = model.evaluate(ids.data(), batch, seq, 7);
  ctx.sync(name.c_str());
  ctx.expect(name + " evaluate count", evaluated.count == expected.count);
  ctx.compare(name + " evaluate", std::vector<double>{evaluated.sum}, std::vector<double>{expected.sum},
              loss_threshold);
}

// The attention-transfer pass (GPTNeoXModel::transfer): its loss and the gradients of every
// attention tensor against the fp64 CPU model's.
template <typename T>
void compare_transfer(Context& ctx, const std::string& name, const ModelConfig& config, double loss_threshold,
                      double grad_threshold) {
  GPTNeoX<double> reference(config);
  reference.parameters() = model_parameters(reference.layout(), config, ctx.rng);
  const int64_t batch = 2, seq = 37;
  std::vector<int32_t> ids(static_cast<size_t>(batch * seq));
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  for (auto& id : ids) id = token(ctx.rng);
  reference.zero_gradients();
  const double expected_loss = reference.transfer(ids.data(), batch, seq, 0.5);

  GPTNeoXModel<CudaOps<T>> model(config, CudaOps<T>(ctx.stream));
  std::vector<float> params(reference.parameters().begin(), reference.parameters().end());
  model.ops().upload(model.parameters().data(), params.data(), static_cast<int64_t>(params.size()));
  model.parameters_changed();
  model.zero_gradients();
  const double loss = model.transfer(ids.data(), batch, seq, 0.5);
  ctx.sync(name.c_str());
  ctx.compare(name + " transfer loss", std::vector<double>{loss}, std::vector<double>{expected_loss}, loss_threshold);
  std::vector<float> grads(params.size());
  model.ops().download(grads.data(), model.gradients().data(), static_cast<int64_t>(grads.size()));
  for (const auto& view : reference.layout().views()) {
    if (!view.trainable || !added_by_conversion(view.name)) continue;
    std::vector<double> got(static_cast<size_t>(view.numel())), want(got.size());
    for (int64_t i = 0; i < view.numel(); ++i) {
      got[static_cast<size_t>(i)] = grads[static_cast<size_t>(view.offset + i)];
      want[static_cast<size_t>(i)] = reference.gradients()[static_cast<size_t>(view.offset + i)];
    }
    ctx.compare(name + " transfer d" + view.name, got, want, grad_threshold);
  }
}

// In bf16 the transfer's gradient starts from the difference of two bf16 attention outputs of
// similar size, so it carries more relative rounding than the language model's: over seeds 1-3 the
// worst tensor differed from fp64 by 2-4%, and under the default seed layer 1's feature-weight
// gradient (values ~2e-5) by 16%. The bf16 bound is therefore 0.25; fp32 agrees to ~1e-6.
DJ_GPU_CHECK(model_transfer) {
  compare_transfer<float>(ctx, "fp32 parallel DiJiang", small_config(true, false, true), 1e-5, 1e-4);
  compare_transfer<float>(ctx, "fp32 sequential DiJiang", small_config(false, true, true), 1e-5, 1e-4);
  compare_transfer<__nv_bfloat16>(ctx, "bf16 parallel DiJiang", small_config(true, false, true), 1e-2, 0.25);
}

// The normalised linear-attention baselines through the whole model: features, the decayed kernels
// at γ = 1 over [v, 1], the normalisation; and the transfer pass's loss (they add no trainable tensor).
// fp32 agrees with fp64 to ~1e-6 for all three. In bf16, Performer's and elu + 1's gradients stay
// within ~1.2e-2 (seeds 1-10), but cosFormer's move by 2-24% (seeds 1-12 under the emulation: 0.054,
// 0.035, 0.029, 0.031, 0.089, 0.052, 0.058, 0.243, 0.040, 0.022, 0.064, 0.058), every gradient
// upstream of the attention alike, while its loss agrees to 1e-4. The likely cause: its features are
// relu(q), relu(k), and bf16 rounding switches components near zero on or off, which changes the
// few-term denominators of the first rows. Its bf16 bound is therefore 0.5, which still catches a wrong term.
ModelConfig linear_config(cpu::LinearFeatureMap map, bool parallel) {
  ModelConfig c = small_config(parallel, !parallel, false);
  c.attention = AttentionKind::Linear;
  c.linear.feature_map = map;
  c.linear.chunk = 16;
  c.max_position_embeddings = 64;  // cosformer: angles that vary over the 37 positions
  return c;
}

DJ_GPU_CHECK(model_linear) {
  for (const cpu::LinearFeatureMap map :
       {cpu::LinearFeatureMap::Performer, cpu::LinearFeatureMap::CosFormer, cpu::LinearFeatureMap::Elu}) {
    const std::string name = std::string(choice_name(map));
    compare_model<float>(ctx, "fp32 parallel " + name, linear_config(map, true), 1e-5, 1e-4);
    compare_model<float>(ctx, "fp32 sequential tied " + name, linear_config(map, false), 1e-5, 1e-4);
    compare_model<__nv_bfloat16>(ctx, "bf16 parallel " + name, linear_config(map, true), 1e-2,
                                 map == cpu::LinearFeatureMap::CosFormer ? 0.5 : 5e-2);
    compare_transfer<float>(ctx, "fp32 parallel " + name, linear_config(map, true), 1e-5, 1e-4);
  }
}

DJ_GPU_CHECK(model_fp32) {
  compare_model<float>(ctx, "fp32 parallel softmax", small_config(true, false, false), 1e-5, 1e-4);
  compare_model<float>(ctx, "fp32 sequential tied softmax", small_config(false, true, false), 1e-5, 1e-4);
  compare_model<float>(ctx, "fp32 parallel DiJiang", small_config(true, false, true), 1e-5, 1e-4);
  compare_model<float>(ctx, "fp32 sequential tied DiJiang", small_config(false, true, true), 1e-5, 1e-4);
}

// bf16 gradients against the fp64 reference: rounding the parameters alone to bf16 moves the
// DiJiang gradients by up to 2% (the bias and log γ gradients are sums that largely cancel),
// twice what it does for softmax attention, so DiJiang's bound is 1e-1.
DJ_GPU_CHECK(model_bf16) {
  compare_model<__nv_bfloat16>(ctx, "bf16 parallel softmax", small_config(true, false, false), 1e-2, 5e-2);
  compare_model<__nv_bfloat16>(ctx, "bf16 parallel DiJiang", small_config(true, false, true), 1e-2, 1e-1);
}

// Head size 256 (Pythia-1b's: hidden 2048 over 8 heads), the largest the GPU attention kernels
// take (kernels/cuda/dijiang_attention.h, kMaxHeadDim), through the whole model: hidden 512 over 2
// heads, one layer, so that every attention op runs its d > 128 path (the feature map streaming P,
// the two-pass decay backward, the softmax teacher's column parts). One size above it is refused
// when the model is built, with the way out in the message.
// The weights shrink with the hidden size (model_parameters): with σ = 0.05 at D = 512, q and k are
// 2.8x larger than at D = 64 and the feature map's softmax amplifies the rounding of its input so
// much that the gradients upstream of it move from fp64 by ~1e-4 in fp32 and 0.1-0.4 in bf16, at
// d = 128 as well, where the kernels are the tuned ones: that measured the conditioning of the
// random model, not the kernels.
ModelConfig head_config(int64_t head_dim, bool dijiang) {
  ModelConfig c = small_config(true, false, dijiang);
  c.num_heads = 2;
  c.hidden_size = 2 * head_dim;
  c.num_layers = 1;
  c.intermediate_size = 2 * head_dim;
  return c;
}

DJ_GPU_CHECK(model_heads) {
  compare_model<float>(ctx, "fp32 d=256 DiJiang", head_config(256, true), 1e-5, 1e-4);
  compare_model<float>(ctx, "fp32 d=256 softmax", head_config(256, false), 1e-5, 1e-4);
  compare_model<__nv_bfloat16>(ctx, "bf16 d=256 softmax", head_config(256, false), 1e-2, 5e-2);
  compare_model<__nv_bfloat16>(ctx, "bf16 d=256 DiJiang", head_config(256, true), 1e-2, 1e-1);
  std::string message;
  try {
    GPTNeoXModel<CudaOps<float>> model(head_config(512, true), CudaOps<float>(ctx.stream));
  } catch (const Error& e) {
    message = e.what();
  }
  ctx.expect("head size 512 refused on the GPU", message.find("head size 512") != std::string::npos &&
                                                     message.find("--device cpu") != std::string::npos,
             message);
}

// One optimizer step of a Pythia-410M-shaped DiJiang model (24 layers, hidden 1024, 16 heads,
// vocabulary 50304) on 8 sequences of 2048 tokens in bf16. MFU counts 6 · parameters · tokens
// (the dense products) against the bf16 dense peak.
DJ_GPU_BENCH(train_step_410m) {
  ModelConfig config;
  config.vocab_size = 50304;
  config.hidden_size = 1024;
  config.num_layers = 24;
  config.num_heads = 16;
  config.intermediate_size = 4096;
  config.rotary_pct = 0.25;
  config.attention = AttentionKind::DiJiang;
  comm::SingleCommunicator single;
  ShardedTraining<CudaOps<__nv_bfloat16>> state(config, 0, single, CudaOps<__nv_bfloat16>(ctx.stream), "bench");
  const ParameterLayout layout = ParameterLayout::gpt_neox(config);
  const int64_t total = layout.total();
  {
    const std::vector<double> params = model_parameters(layout, config, ctx.rng);
    state.load([&](const std::string&, int64_t begin, int64_t end, float* out) {
      for (int64_t i = begin; i < end; ++i) out[i - begin] = static_cast<float>(params[static_cast<size_t>(i)]);
    }, false);
  }
  const int64_t batch = 8, seq = 2048;
  std::vector<int32_t> ids(static_cast<size_t>(batch * seq));
  std::uniform_int_distribution<int32_t> token(0, static_cast<int32_t>(config.vocab_size - 1));
  for (auto& id : ids) id = token(ctx.rng);
  int64_t step = 0;
  double loss = 0.0;
  const double ms = ctx.time_ms(
      [&] {
        state.start_step();
        loss = state.micro_batch(ids.data(), batch, seq, 1.0, true, true);
        state.finish_gradients();
        const double norm = std::sqrt(state.gradient_sum_of_squares());
        state.clip(norm, 1.0);
        state.update(++step, 1e-4, AdamWConfig{});
      },
      3, 1);
  ctx.expect("410M train step loss is finite", std::isfinite(loss), "loss " + std::to_string(loss));
  const double tokens = static_cast<double>(batch * seq);
  const double flops = 6.0 * static_cast<double>(total) * tokens;
  constexpr double kPeakBf16 = 989e12;  // H200 dense bf16 peak by the datasheet; ~790 measured
  BenchRow row;
  row.name = "train step 410M DiJiang bf16, 8x2048";
  row.ms = ms;
  row.tflops = flops / (ms * 1e-3) / 1e12;
  row.floor_ms = flops / kPeakBf16 * 1e3;
  row.note = "tokens/s " + std::to_string(static_cast<int64_t>(tokens / (ms * 1e-3))) + ", MFU " +
             std::to_string(static_cast<int>(100.0 * row.floor_ms / ms)) + "%";
  ctx.bench(row);
}

}  // namespace
}  // namespace dj::gpucheck
