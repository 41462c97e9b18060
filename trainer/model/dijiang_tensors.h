// The tensors DiJiang attention adds to each GPT-NeoX layer: their initialisation when a softmax
// model is converted (docs/method.md, sections 2-3), and the interchange layout
// for the reference modeling code (section 5).
//
// Native names, per layer under gpt_neox.layers.{i}.attention.:
//   proj_matrix [d, d] (fixed; absent without a feature map)  W_G [D, D]  group_norm.{weight,bias} [D]
//   log_gamma [H]
//   feature_weights [H, d] (only with learned feature weights)
// Interchange names replace log_gamma by the reference code's position tables D1, D2
// [1, H, L, 1] (γ^i and γ^(−i), L = max_position_embeddings, F32).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "trainer/checkpoint/stored_tensor.h"
#include "trainer/checkpoint/tensor_map.h"
#include "trainer/model/config.h"

namespace dj {

// Φ⁻¹, the standard normal quantile, to full double precision for u in (0, 1).
double inverse_normal_cdf(double u);

// The t_i of P = C · diag(t) for one layer: qmc draws the stratified points
// u_i = (π(i) + 0.5) / d with π a permutation seeded by (seed, layer); mc draws u_i ~ U(0, 1)
// (u = 0 gives t = 0, as the reference code does). Deterministic for a seed on every platform.
std::vector<double> sample_feature_scales(const DiJiangOptions& options, int64_t d, int64_t layer);

// One layer's projection P (d x d, row-major; x · P gives the features before their softmax):
// C · diag(t) for projection dct, G · diag(t) / sqrt(d) for gaussian, G a matrix of standard normal
// draws seeded by (seed, layer). The t are those of sample_feature_scales. Fails for projection none.
std::vector<double> feature_projection(const DiJiangOptions& options, int64_t d, int64_t layer);

// The performer's random features for one layer: P [d, d] whose columns ω_j are orthogonal, with
// the lengths of independent standard Gaussian vectors (positive orthogonal random features), seeded
// by (seed, layer).
std::vector<double> performer_projection(const LinearOptions& options, int64_t d, int64_t layer);

// log γ_h for γ_h = 1 − exp(ℓ_h), ℓ = linspace(log(1/32), log(1/512), H) (ℓ = log(1/32) when H = 1).
std::vector<double> reference_log_gamma(int64_t heads);

// Adds every layer's DiJiang tensors, initialised as the reference page says, in `dtype`:
// P from the sampled t, W_G Xavier-uniform with gain 2^−2.5, GroupNorm 1 / 0, log γ from the
// schedule, feature weights 1. `config` must be a converted config: for a linear-attention baseline
// the only tensor is the performer's proj_matrix (performer_projection; none for cosformer and elu).
void add_dijiang_tensors(TensorMap& tensors, const ModelConfig& config, DType dtype);
// The same tensors as a plan: each made, from the options alone, when it is asked for.
TensorPlan dijiang_tensor_plan(const ModelConfig& config, DType dtype);

// True when the tensors carry the reference code's D1 tables.
bool has_interchange_tables(const TensorMap& tensors);

// Turns an interchange checkpoint into native tensors: γ_h is read back from D1 (a table that is
// not geometric is refused), D2 must be its inverse table (then both are dropped). Sets the config to
// DiJiang (keeping options already present in it). `source` names the checkpoint in errors.
void import_interchange(TensorMap& tensors, ModelConfig& config, const std::string& source);

// The interchange layout of native tensors: log_gamma becomes D1/D2 (F32), proj_matrix F32, the
// rest in `dtype`. Options the layout cannot express (learned feature weights, H GroupNorm groups)
// are refused with a message saying so.
TensorMap export_interchange(const TensorMap& tensors, const ModelConfig& config, DType dtype);
// The same over a plan: the D1/D2 tables are computed (and checked) now, every other tensor when
// a writer reaches it. The result refers to `tensors`, which must outlive it.
TensorPlan export_interchange(const TensorPlan& tensors, const ModelConfig& config, DType dtype);

}  // namespace dj
