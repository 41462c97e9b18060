// The normalised linear-attention baselines (model.attention performer, cosformer, elu): their
// feature maps against the definitions and finite differences, the normalised attention through
// the decayed kernels (γ = 1, a ones column on V) against the quadratic definition in all three
// forms, the performer's orthogonal features, whole-model fp64 gradients against finite
// differences, the three forms of the whole model, and the config they record. Decoding is in
// test_decoding.cpp, the transfer stage in test_attention_transfer.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <random>
#include <string>
#include <vector>

#include "gradcheck.h"
#include "kernels/core/error.h"
#include "kernels/cpu/dijiang.h"
#include "kernels/cpu/linear_attention.h"
#include "model_test_support.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/parameters.h"

namespace dj {
namespace {

using cpu::LinearFeatureMap;

constexpr LinearFeatureMap kMaps[] = {LinearFeatureMap::Performer, LinearFeatureMap::CosFormer, LinearFeatureMap::Elu};

std::vector<double> normal_values(size_t n, uint64_t seed, double sigma) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, sigma);
  std::vector<double> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

// φ(x) of one row at `position`, written out from the definitions (kernels/cpu/linear_attention.h).
std::vector<double> literal_feature(LinearFeatureMap map, bool query, const double* x, const std::vector<double>& P,
                                    int64_t d, int64_t position, int64_t horizon) {
  std::vector<double> f;
  if (map == LinearFeatureMap::Elu) {
    for (int64_t j = 0; j < d; ++j) f.push_back(x[j] > 0 ? x[j] + 1 : std::exp(x[j]));
  } else if (map == LinearFeatureMap::CosFormer) {
    const double angle = std::numbers::pi / 2 * static_cast<double>(position) / static_cast<double>(horizon);
    for (int64_t j = 0; j < d; ++j) f.push_back(std::max(x[j], 0.0) * std::cos(angle));
    for (int64_t j = 0; j < d; ++j) f.push_back(std::max(x[j], 0.0) * std::sin(angle));
  } else {
    const double s = std::pow(static_cast<double>(d), -0.25);
    double norm = 0.0;
    std::vector<double> z(static_cast<size_t>(d));
    for (int64_t k = 0; k < d; ++k) norm += (s * x[k]) * (s * x[k]);
    for (int64_t j = 0; j < d; ++j)
      for (int64_t k = 0; k < d; ++k) z[static_cast<size_t>(j)] += s * x[k] * P[static_cast<size_t>(k * d + j)];
    const double shift = query ? *std::max_element(z.begin(), z.end()) : norm / 2;
    for (int64_t j = 0; j < d; ++j) f.push_back(std::exp(z[static_cast<size_t>(j)] - shift) / std::sqrt(double(d)));
  }
  return f;
}

TEST(LinearFeatureMaps, MatchTheDefinitions) {
  const int64_t BH = 2, n = 5, d = 6, horizon = 16, position0 = 3;
  const std::vector<double> x = normal_values(static_cast<size_t>(BH * n * d), 1, 0.8);
  LinearOptions options;
  options.seed = 4;
  const std::vector<double> P = performer_projection(options, d, 0);
  for (const LinearFeatureMap map : kMaps)
    for (const bool query : {false, true}) {
      SCOPED_TRACE(std::string(choice_name(map)) + (query ? " query" : " key"));
      const int64_t m = cpu::linear_feature_count(map, d);
      std::vector<double> f(static_cast<size_t>(BH * n * m));
      cpu::linear_feature_forward(f.data(), x.data(), P.data(), map, query, BH, n, d, position0, horizon);
      for (int64_t r = 0; r < BH * n; ++r) {
        const std::vector<double> want = literal_feature(map, query, x.data() + r * d, P, d, position0 + r % n, horizon);
        for (int64_t j = 0; j < m; ++j)
          ASSERT_NEAR(f[static_cast<size_t>(r * m + j)], want[static_cast<size_t>(j)], 1e-14) << "row " << r << " " << j;
      }
    }
  std::vector<double> f(static_cast<size_t>(BH * n * 2 * d));
  EXPECT_THROW(cpu::linear_feature_forward(f.data(), x.data(), P.data(), LinearFeatureMap::CosFormer, false, BH, n, d,
                                           12, horizon),
               Error);
}

// The backward against central differences of ⟨w, φ(x)⟩ (the performer's query shift is held fixed,
// as the normalisation makes it: checked on the key form here and through the model below).
TEST(LinearFeatureMaps, BackwardMatchesFiniteDifferences) {
  const int64_t BH = 2, n = 4, d = 5, horizon = 9;
  LinearOptions options;
  const std::vector<double> P = performer_projection(options, d, 2);
  for (const LinearFeatureMap map : kMaps) {
    SCOPED_TRACE(std::string(choice_name(map)));
    const int64_t m = cpu::linear_feature_count(map, d);
    std::vector<double> x = normal_values(static_cast<size_t>(BH * n * d), 3, 0.7);
    for (auto& v : x)
      if (std::abs(v) < 1e-3) v = 0.1;  // keep relu's kink away from the differences
    const std::vector<double> w = normal_values(static_cast<size_t>(BH * n * m), 4, 1.0);
    std::vector<double> f(w.size()), dx(x.size());
    cpu::linear_feature_forward(f.data(), x.data(), P.data(), map, false, BH, n, d, 1, horizon);
    cpu::linear_feature_backward(dx.data(), w.data(), f.data(), x.data(), P.data(), map, false, BH, n, d, 1, horizon);
    const auto objective = [&](std::vector<double>& at) {
      std::vector<double> g(w.size());
      cpu::linear_feature_forward(g.data(), at.data(), P.data(), map, false, BH, n, d, 1, horizon);
      double sum = 0.0;
      for (size_t i = 0; i < g.size(); ++i) sum += w[i] * g[i];
      return sum;
    };
    test::GradCheckOptions check;
    check.eps = 1e-6;
    const test::GradCheckResult r = test::gradcheck(objective, x, dx, check);
    EXPECT_LE(r.max_error, 1e-6) << r;
  }
}

// The attention of [v, 1] through the decayed kernels with γ = 1, normalised, equals
// o_i = Σ_{j<=i} ⟨fq_i, fk_j⟩ v_j / Σ_{j<=i} ⟨fq_i, fk_j⟩ in every form; its backward (normalisation,
// attention, column drop) matches finite differences.
TEST(LinearAttention, NormalisedOnesColumnEqualsTheQuadraticDefinitionInEveryForm) {
  const int64_t BH = 3, H = 3, n = 11, m = 4, dv = 5;
  std::vector<double> fq = normal_values(static_cast<size_t>(BH * n * m), 5, 1.0);
  std::vector<double> fk = normal_values(static_cast<size_t>(BH * n * m), 6, 1.0);
  for (auto* f : {&fq, &fk})
    for (auto& v : *f) v = std::exp(v);  // positive features, as every baseline's
  const std::vector<double> v = normal_values(static_cast<size_t>(BH * n * dv), 7, 1.0);
  const std::vector<double> zero(static_cast<size_t>(H), 0.0);
  std::vector<double> want(static_cast<size_t>(BH * n * dv));
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t i = 0; i < n; ++i) {
      double den = 0.0;
      std::vector<double> num(static_cast<size_t>(dv));
      for (int64_t j = 0; j <= i; ++j) {
        double a = 0.0;
        for (int64_t c = 0; c < m; ++c) a += fq[static_cast<size_t>((bh * n + i) * m + c)] * fk[static_cast<size_t>((bh * n + j) * m + c)];
        den += a;
        for (int64_t c = 0; c < dv; ++c) num[static_cast<size_t>(c)] += a * v[static_cast<size_t>((bh * n + j) * dv + c)];
      }
      for (int64_t c = 0; c < dv; ++c) want[static_cast<size_t>((bh * n + i) * dv + c)] = num[static_cast<size_t>(c)] / den;
    }
  std::vector<double> vx(static_cast<size_t>(BH * n * (dv + 1))), ox(vx.size()), o(v.size());
  cpu::append_ones(vx.data(), v.data(), BH * n, dv);
  for (const cpu::DecayForm form : {cpu::DecayForm::Parallel, cpu::DecayForm::Chunkwise, cpu::DecayForm::Recurrent}) {
    SCOPED_TRACE(std::string(choice_name(form)));
    cpu::decay_attention_forward(ox.data(), fq.data(), fk.data(), vx.data(), zero.data(), BH, H, n, m, dv + 1, form, 4);
    cpu::normalize_rows_forward(o.data(), ox.data(), BH * n, dv);
    EXPECT_LE(test::relative_error(o, want), 1e-13);
  }
  // Backward of ⟨w, o(v)⟩ with respect to v.
  const std::vector<double> w = normal_values(v.size(), 8, 1.0);
  std::vector<double> dox(vx.size()), dfq(fq.size()), dfk(fk.size()), dvx(vx.size()), dv_out(v.size());
  cpu::decay_attention_forward(ox.data(), fq.data(), fk.data(), vx.data(), zero.data(), BH, H, n, m, dv + 1,
                               cpu::DecayForm::Chunkwise, 4);
  cpu::normalize_rows_forward(o.data(), ox.data(), BH * n, dv);
  cpu::normalize_rows_backward(dox.data(), w.data(), o.data(), ox.data(), BH * n, dv);
  cpu::decay_attention_backward(dfq.data(), dfk.data(), dvx.data(), static_cast<double*>(nullptr), dox.data(),
                                fq.data(), fk.data(), vx.data(), zero.data(), BH, H, n, m, dv + 1,
                                cpu::DecayForm::Chunkwise, 4);
  cpu::drop_last_column(dv_out.data(), dvx.data(), BH * n, dv);
  const auto through = [&](const std::vector<double>& q, const std::vector<double>& k, const std::vector<double>& val) {
    std::vector<double> x1(vx.size()), y1(vx.size()), o1(val.size());
    cpu::append_ones(x1.data(), val.data(), BH * n, dv);
    cpu::decay_attention_forward(y1.data(), q.data(), k.data(), x1.data(), zero.data(), BH, H, n, m, dv + 1,
                                 cpu::DecayForm::Parallel, 4);
    cpu::normalize_rows_forward(o1.data(), y1.data(), BH * n, dv);
    double sum = 0.0;
    for (size_t i = 0; i < o1.size(); ++i) sum += w[i] * o1[i];
    return sum;
  };
  test::GradCheckOptions check;
  check.eps = 1e-6;
  std::vector<double> vv = v, qq = fq, kk = fk;
  EXPECT_LE(test::gradcheck([&](std::vector<double>& at) { return through(fq, fk, at); }, vv, dv_out, check).max_error,
            1e-6);
  EXPECT_LE(test::gradcheck([&](std::vector<double>& at) { return through(at, fk, v); }, qq, dfq, check).max_error, 1e-6);
  EXPECT_LE(test::gradcheck([&](std::vector<double>& at) { return through(fq, at, v); }, kk, dfk, check).max_error, 1e-6);
  // A row whose features meet no key's gives 0, and no gradient.
  std::vector<double> empty = {1.0, 2.0, 0.0}, out(2), dempty(3);
  cpu::normalize_rows_forward(out.data(), empty.data(), 1, 2);
  EXPECT_EQ(out, (std::vector<double>{0.0, 0.0}));
  const std::vector<double> g = {1.0, 1.0};
  cpu::normalize_rows_backward(dempty.data(), g.data(), out.data(), empty.data(), 1, 2);
  EXPECT_EQ(dempty, (std::vector<double>{0.0, 0.0, 0.0}));
}

TEST(LinearAttention, PerformerFeaturesAreOrthogonalGaussianDirectionsSeededPerLayer) {
  LinearOptions options;
  options.seed = 9;
  const int64_t d = 16;
  const std::vector<double> P = performer_projection(options, d, 1);
  for (int64_t a = 0; a < d; ++a)
    for (int64_t b = 0; b < a; ++b) {
      double dot = 0.0;
      for (int64_t k = 0; k < d; ++k) dot += P[static_cast<size_t>(k * d + a)] * P[static_cast<size_t>(k * d + b)];
      ASSERT_NEAR(dot, 0.0, 1e-12) << a << " " << b;
    }
  // Lengths are chi(d) draws: mean about sqrt(d - 1/2), none degenerate.
  double mean = 0.0;
  for (int64_t a = 0; a < d; ++a) {
    double length = 0.0;
    for (int64_t k = 0; k < d; ++k) length += P[static_cast<size_t>(k * d + a)] * P[static_cast<size_t>(k * d + a)];
    EXPECT_GT(std::sqrt(length), 1.0);
    mean += std::sqrt(length) / static_cast<double>(d);
  }
  EXPECT_NEAR(mean, std::sqrt(d - 0.5), 1.0);
  EXPECT_EQ(performer_projection(options, d, 1), P);
  EXPECT_NE(performer_projection(options, d, 2), P);
  options.seed = 10;
  EXPECT_NE(performer_projection(options, d, 1), P);
}

ModelConfig baseline(LinearFeatureMap map, bool parallel = true) {
  ModelConfig c = test::tiny_config(parallel, "gelu");
  c.attention = AttentionKind::Linear;
  c.linear.feature_map = map;
  c.linear.chunk = 4;  // sequences of 9 and 13 tokens: full chunks and a short one
  c.max_position_embeddings = 20;  // cosformer's angles vary over the sequence
  return c;
}

TEST(LinearAttention, WholeModelGradientsMatchFiniteDifferences) {
  for (const LinearFeatureMap map : kMaps) {
    SCOPED_TRACE(std::string(choice_name(map)));
    test::finite_difference_check(baseline(map));
  }
  test::finite_difference_check(baseline(LinearFeatureMap::Performer, false));
}

TEST(LinearAttention, ThreeFormsGiveTheSameLossAndGradients) {
  for (const LinearFeatureMap map : kMaps) {
    SCOPED_TRACE(std::string(choice_name(map)));
    test::three_forms_agree(baseline(map));
  }
}

TEST(LinearAttention, LayoutAndConfigRecordTheBaseline) {
  for (const LinearFeatureMap map : kMaps) {
    SCOPED_TRACE(std::string(choice_name(map)));
    ModelConfig c = baseline(map);
    c.linear.seed = 3;
    const ParameterLayout layout = ParameterLayout::gpt_neox(c);
    const bool performer = map == LinearFeatureMap::Performer;
    EXPECT_EQ(layout.contains("gpt_neox.layers.0.attention.proj_matrix"), performer);
    EXPECT_FALSE(layout.contains("gpt_neox.layers.0.attention.W_G"));
    EXPECT_FALSE(layout.contains("gpt_neox.layers.0.attention.log_gamma"));
    EXPECT_EQ(layout.total(), c.parameter_count());
    const ModelConfig softmax = test::tiny_config(true, "gelu");
    EXPECT_EQ(c.parameter_count() - softmax.parameter_count(),
              performer ? c.num_layers * c.head_dim() * c.head_dim() : 0);
    const nlohmann::json json = c.to_hf_json();
    EXPECT_EQ(json.at("attention_kind"), "linear");
    EXPECT_FALSE(json.contains("dijiang"));
    const ModelConfig back = ModelConfig::from_hf_json(json, "config.json");
    EXPECT_TRUE(back.is_linear());
    EXPECT_EQ(back.linear.feature_map, map);
    EXPECT_EQ(back.linear.seed, 3u);
    EXPECT_EQ(back.linear.chunk, 4);
    EXPECT_EQ(back.attention_name(), std::string(choice_name(map)));
    // Its tensors: the performer's fixed projection only.
    TensorMap tensors;
    add_dijiang_tensors(tensors, c, DType::F64);
    EXPECT_EQ(tensors.size(), performer ? static_cast<size_t>(c.num_layers) : 0u);
  }
  const auto refused = [](nlohmann::json json, const std::string& message) {
    try {
      ModelConfig::from_hf_json(json, "config.json");
      ADD_FAILURE() << json.dump() << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << e.what();
    }
  };
  nlohmann::json good = baseline(LinearFeatureMap::Elu).to_hf_json();
  nlohmann::json bad = good;
  bad["linear_attention"]["feature_map"] = "relu";
  refused(bad, "relu");
  bad = good;
  bad["linear_attention"].erase("feature_map");
  refused(bad, "missing field 'linear_attention.feature_map'");
  bad = good;
  bad["linear_attention"]["decay"] = 0.5;
  refused(bad, "unknown key 'linear_attention.decay'");
  bad = good;
  bad["dijiang"] = nlohmann::json::object();
  refused(bad, "'dijiang' options given but attention_kind is linear");
  bad = good;
  bad["attention_kind"] = "softmax";
  refused(bad, "'linear_attention' options given but attention_kind is softmax");
}

}  // namespace
}  // namespace dj
