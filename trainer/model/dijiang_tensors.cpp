#include "trainer/model/dijiang_tensors.h"

#include <cmath>
#include <numbers>

#include "kernels/core/error.h"
#include "kernels/core/random.h"
#include "kernels/cpu/dijiang.h"
#include "trainer/model/parameters.h"

namespace dj {

namespace {

// One independent stream per (seed, layer, purpose).
SplitMix64 stream(uint64_t seed, int64_t layer, uint64_t purpose) {
  SplitMix64 mix(seed ^ 0x6A09E667F3BCC909ull);
  const uint64_t a = mix.next() ^ static_cast<uint64_t>(layer) * 0x9E3779B97F4A7C15ull;
  return SplitMix64(a ^ purpose * 0xD1B54A32D192ED03ull);
}
constexpr uint64_t kFeatureStream = 1, kGateStream = 2, kProjectionStream = 3, kPerformerStream = 4;

std::string attention_prefix(int64_t layer) { return layer_prefix(layer) + "attention."; }

Tensor from_doubles(const std::vector<double>& values, Shape shape, DType dtype) {
  return Tensor::from_vector(values, std::move(shape)).to(dtype);
}

}  // namespace

double inverse_normal_cdf(double u) {
  if (!(u > 0.0 && u < 1.0)) fail("inverse_normal_cdf: {} is not in (0, 1)", u);
  // Acklam's rational approximation (relative error 1.2e-9), then one Halley step on
  // Φ(x) − u with Φ from erfc, which brings it to full double precision.
  static constexpr double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                                 1.383577518672690e+02,  -3.066479806614716e+01, 2.506628277459239e+00};
  static constexpr double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                                 6.680131188771972e+01,  -1.328068155288572e+01};
  static constexpr double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                                 -2.549732539343734e+00, 4.374664141464968e+00,  2.938163982698783e+00};
  static constexpr double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                                 3.754408661907416e+00};
  constexpr double low = 0.02425;
  double x;
  if (u < low) {
    const double q = std::sqrt(-2.0 * std::log(u));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
  } else if (u <= 1.0 - low) {
    const double q = u - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0);
  } else {
    const double q = std::sqrt(-2.0 * std::log1p(-u));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1.0);
  }
  const double e = 0.5 * std::erfc(-x / std::numbers::sqrt2) - u;
  const double step = e * std::sqrt(2.0 * std::numbers::pi) * std::exp(x * x / 2.0);
  return x - step / (1.0 + x * step / 2.0);
}

std::vector<double> sample_feature_scales(const DiJiangOptions& options, int64_t d, int64_t layer) {
  SplitMix64 rng = stream(options.seed, layer, kFeatureStream);
  std::vector<double> t(static_cast<size_t>(d));
  if (options.sampling == FeatureSampling::QMC) {
    std::vector<int64_t> permutation(static_cast<size_t>(d));
    for (int64_t i = 0; i < d; ++i) permutation[static_cast<size_t>(i)] = i;
    rng.shuffle(permutation.data(), d);
    for (int64_t i = 0; i < d; ++i)
      t[static_cast<size_t>(i)] =
          inverse_normal_cdf((static_cast<double>(permutation[static_cast<size_t>(i)]) + 0.5) / static_cast<double>(d));
  } else {
    for (auto& value : t) {
      const double u = rng.uniform();
      value = u == 0.0 ? 0.0 : inverse_normal_cdf(u);
    }
  }
  return t;
}

std::vector<double> reference_log_gamma(int64_t heads) {
  std::vector<double> log_gamma(static_cast<size_t>(heads));
  const double first = std::log(1.0 / 32.0), last = std::log(1.0 / 512.0);
  for (int64_t h = 0; h < heads; ++h) {
    const double ell =
        heads == 1 ? first : first + (last - first) * static_cast<double>(h) / static_cast<double>(heads - 1);
    log_gamma[static_cast<size_t>(h)] = std::log1p(-std::exp(ell));
  }
  return log_gamma;
}

std::vector<double> feature_projection(const DiJiangOptions& options, int64_t d, int64_t layer) {
  const std::vector<double> t = sample_feature_scales(options, d, layer);
  std::vector<double> P(static_cast<size_t>(d * d));
  if (options.projection == FeatureProjection::DCT) {
    cpu::dct_projection<double>(P.data(), t.data(), d);
  } else if (options.projection == FeatureProjection::Gaussian) {
    // G / sqrt(d) has columns of about unit norm, as the orthonormal C has exactly.
    SplitMix64 rng = stream(options.seed, layer, kProjectionStream);
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    for (int64_t j = 0; j < d; ++j)
      for (int64_t k = 0; k < d; ++k) P[static_cast<size_t>(j * d + k)] = rng.normal() * scale * t[static_cast<size_t>(k)];
  } else {
    fail("feature_projection: a model without a feature map has no projection");
  }
  return P;
}

std::vector<double> performer_projection(const LinearOptions& options, int64_t d, int64_t layer) {
  SplitMix64 rng = stream(options.seed, layer, kPerformerStream);
  // d Gaussian vectors made orthonormal (Gram-Schmidt, twice for full precision), each then given the
  // norm of an independent Gaussian vector: the marginals of ω stay N(0, I), the directions orthogonal.
  std::vector<double> w(static_cast<size_t>(d * d));
  for (auto& value : w) value = rng.normal();
  for (int64_t j = 0; j < d; ++j) {
    double* row = w.data() + j * d;
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t i = 0; i < j; ++i) {
        const double* prev = w.data() + i * d;
        double dot = 0.0;
        for (int64_t k = 0; k < d; ++k) dot += row[k] * prev[k];
        for (int64_t k = 0; k < d; ++k) row[k] -= dot * prev[k];
      }
    double norm = 0.0;
    for (int64_t k = 0; k < d; ++k) norm += row[k] * row[k];
    norm = std::sqrt(norm);
    if (!(norm > 1e-8)) fail("performer_projection: degenerate draw for layer {}", layer);
    for (int64_t k = 0; k < d; ++k) row[k] /= norm;
  }
  std::vector<double> P(static_cast<size_t>(d * d));
  for (int64_t j = 0; j < d; ++j) {
    double length = 0.0;
    for (int64_t k = 0; k < d; ++k) {
      const double g = rng.normal();
      length += g * g;
    }
    length = std::sqrt(length);
    for (int64_t k = 0; k < d; ++k) P[static_cast<size_t>(k * d + j)] = w[static_cast<size_t>(j * d + k)] * length;
  }
  return P;
}

TensorPlan dijiang_tensor_plan(const ModelConfig& config, DType dtype) {
  if (config.is_linear()) {
    TensorPlan plan;
    if (config.linear.feature_map != cpu::LinearFeatureMap::Performer) return plan;
    const int64_t d = config.head_dim();
    const LinearOptions options = config.linear;
    for (int64_t l = 0; l < config.num_layers; ++l)
      plan[attention_prefix(l) + "proj_matrix"] = {dtype, {d, d}, [options, d, l, dtype] {
                                                    return from_doubles(performer_projection(options, d, l), {d, d},
                                                                        dtype);
                                                  }};
    return plan;
  }
  if (!config.is_dijiang()) fail("add_dijiang_tensors needs a converted config");
  const int64_t D = config.hidden_size, H = config.num_heads, d = config.head_dim();
  const double bound = std::pow(2.0, -2.5) * std::sqrt(6.0 / static_cast<double>(2 * D));
  const DiJiangOptions options = config.dijiang;
  const auto constant = [dtype](double value, Shape shape) {
    return [value, shape, dtype] {
      return from_doubles(std::vector<double>(static_cast<size_t>(shape_numel(shape)), value), shape, dtype);
    };
  };
  TensorPlan plan;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const std::string p = attention_prefix(l);
    if (config.has_feature_map())
      plan[p + "proj_matrix"] = {dtype, {d, d}, [options, d, l, dtype] {
                                   return from_doubles(feature_projection(options, d, l), {d, d}, dtype);
                                 }};
    plan[p + "W_G"] = {dtype, {D, D}, [options, D, l, bound, dtype] {
                         SplitMix64 rng = stream(options.seed, l, kGateStream);
                         std::vector<double> gate(static_cast<size_t>(D * D));
                         for (auto& w : gate) w = (2.0 * rng.uniform() - 1.0) * bound;
                         return from_doubles(gate, {D, D}, dtype);
                       }};
    plan[p + "group_norm.weight"] = {dtype, {D}, constant(1.0, {D})};
    plan[p + "group_norm.bias"] = {dtype, {D}, constant(0.0, {D})};
    plan[p + "log_gamma"] = {dtype, {H}, [H, dtype] { return from_doubles(reference_log_gamma(H), {H}, dtype); }};
    if (options.feature_weights) plan[p + "feature_weights"] = {dtype, {H, d}, constant(1.0, {H, d})};
  }
  return plan;
}

void add_dijiang_tensors(TensorMap& tensors, const ModelConfig& config, DType dtype) {
  for (const auto& [name, planned] : dijiang_tensor_plan(config, dtype)) tensors[name] = planned.make();
}

bool has_interchange_tables(const TensorMap& tensors) {
  for (const auto& [name, tensor] : tensors)
    if (name.ends_with(".attention.D1")) return true;
  return false;
}

void import_interchange(TensorMap& tensors, ModelConfig& config, const std::string& source) {
  config.attention = AttentionKind::DiJiang;
  const int64_t H = config.num_heads;
  for (int64_t l = 0; l < config.num_layers; ++l) {
    const std::string p = attention_prefix(l);
    const auto d1 = tensors.find(p + "D1");
    const auto d2 = tensors.find(p + "D2");
    if (d1 == tensors.end() || d2 == tensors.end())
      fail("{}: layer {} lacks the D1/D2 tables other layers have", source, l);
    const Shape& shape = d1->second.shape();
    if (shape.size() != 4 || shape[0] != 1 || shape[1] != H || shape[2] < 2 || shape[3] != 1)
      fail("{}: tensor '{}D1' has shape {}, expected [1, {}, L, 1]", source, p, shape_string(shape), H);
    if (d2->second.shape() != shape)
      fail("{}: tensor '{}D2' has shape {}, D1 has {}", source, p, shape_string(d2->second.shape()), shape_string(shape));
    const int64_t L = shape[2];
    const std::vector<double> table = d1->second.to_f64_vector();
    const std::vector<double> d2_table = d2->second.to_f64_vector();
    std::vector<double> log_gamma(static_cast<size_t>(H));
    for (int64_t h = 0; h < H; ++h) {
      const double* row = table.data() + h * L;
      // γ from the farthest entry that is still a normal float: its rounding error is spread
      // over the largest exponent, so γ comes back to about 1e-10.
      int64_t far = L - 1;
      while (far > 1 && !(row[far] > 1e-30)) --far;
      const double gamma = std::pow(row[far] / row[0], 1.0 / static_cast<double>(far));
      if (row[0] != 1.0 || !(gamma > 0.0 && gamma < 1.0))
        fail("{}: '{}D1' head {} is not a decay table γ^i with 0 < γ < 1 (D1[0] = {}, γ = {})", source, p, h,
             row[0], gamma);
      for (int64_t i = 0; i <= far; ++i) {
        const double expected = std::pow(gamma, static_cast<double>(i));
        if (std::abs(row[i] - expected) > 1e-3 * expected)
          fail("{}: '{}D1' head {} is not geometric: D1[{}] = {} but γ^{} = {} for γ = {}", source, p, h, i, row[i],
               i, expected, gamma);
      }
      // The reference code multiplies D1[i] by D2[j]: D2 must be the inverse table, or that code
      // computes another function than the one read back here.
      const double* inverse = d2_table.data() + h * L;
      for (int64_t i = 0; i <= far; ++i)
        if (std::abs(row[i] * inverse[i] - 1.0) > 1e-3)
          fail("{}: '{}D2' head {} is not the inverse of D1: D1[{}] * D2[{}] = {}", source, p, h, i, i,
               row[i] * inverse[i]);
      log_gamma[static_cast<size_t>(h)] = std::log(gamma);
    }
    tensors.erase(d1);
    tensors.erase(d2);
    tensors[p + "log_gamma"] = Tensor::from_vector(log_gamma, {H});
  }
}

TensorPlan export_interchange(const TensorPlan& tensors, const ModelConfig& config, DType dtype) {
  if (!config.has_feature_map())
    fail("the reference DiJiang layout has a feature map: a model without one (model.dijiang.projection none, "
         "model.attention retnet) cannot be exported with --format hf (keep the native checkpoint)");
  if (config.dijiang.feature_weights)
    fail("the reference DiJiang layout has no learned feature weights: this model cannot be exported "
         "with --format hf (keep the native checkpoint)");
  if (config.dijiang.group_norm_per_head)
    fail("the reference DiJiang layout normalises over head_dim groups: a model with per-head GroupNorm "
         "cannot be exported with --format hf");
  const int64_t H = config.num_heads, L = config.max_position_embeddings;
  TensorPlan out;
  for (const auto& entry : tensors) {
    const std::string& name = entry.first;
    const PlannedTensor& planned = entry.second;
    if (name.ends_with(".attention.log_gamma")) {
      // The tables are small ([1, H, L, 1]) and checked here, before anything is written.
      const std::string p = name.substr(0, name.size() - std::string("log_gamma").size());
      const std::vector<double> log_gamma = planned.make().to_f64_vector();
      std::vector<double> d1(static_cast<size_t>(H * L)), d2(d1.size());
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < L; ++i) {
          const double exponent = static_cast<double>(i) * log_gamma[static_cast<size_t>(h)];
          d1[static_cast<size_t>(h * L + i)] = std::exp(exponent);
          d2[static_cast<size_t>(h * L + i)] = std::exp(-exponent);
        }
      Tensor d2_tensor = from_doubles(d2, {1, H, L, 1}, DType::F32);
      for (double v : d2_tensor.to_f64_vector())
        if (!std::isfinite(v))
          fail("the reference layout's D2 table (γ^(−i) for i < max_position_embeddings = {}) overflows float32 "
               "for this model's decay; export is not possible",
               L);
      const Tensor d1_tensor = from_doubles(d1, {1, H, L, 1}, DType::F32);
      out[p + "D1"] = {DType::F32, d1_tensor.shape(), [d1_tensor] { return d1_tensor; }};
      out[p + "D2"] = {DType::F32, d2_tensor.shape(), [d2_tensor] { return d2_tensor; }};
    } else if (name.ends_with(".attention.proj_matrix")) {
      out[name] = {DType::F32, planned.shape, [&planned] { return planned.make().to(DType::F32); }};
    } else {
      out[name] = {dtype, planned.shape, [&planned, dtype] {
                     Tensor tensor = planned.make();
                     return tensor.dtype() == dtype ? tensor : tensor.to(dtype);
                   }};
    }
  }
  return out;
}

TensorMap export_interchange(const TensorMap& tensors, const ModelConfig& config, DType dtype) {
  return make_all(export_interchange(plan_of(tensors), config, dtype));
}

}  // namespace dj
