// The DiJiang variants that share every kernel with it (model.dijiang.projection): gaussian, a
// Gaussian matrix in place of the DCT (the paper's ablation), and none, no feature map at all
// (RetNet-style retention, model.attention retnet). Whole-model fp64 gradients against finite
// differences, the three attention forms against each other, the projection's construction, the
// tensors and config they record, and the refusals. Decoding is in test_decoding.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "kernels/core/error.h"
#include "model_test_support.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/parameters.h"

namespace dj {
namespace {

ModelConfig variant(FeatureProjection projection, const std::string& form) {
  ModelConfig c = test::tiny_config(true, "gelu");
  c.attention = AttentionKind::DiJiang;
  c.dijiang.projection = projection;
  c.dijiang.form = parse_choice<cpu::DecayForm>(form, "form", "test");
  c.dijiang.chunk = 4;  // sequences of 9 and 13 tokens: full chunks and a short one
  return c;
}

TEST(AttentionVariants, FiniteDifferences) {
  for (const FeatureProjection projection : {FeatureProjection::Gaussian, FeatureProjection::None}) {
    SCOPED_TRACE(std::string(choice_name(projection)));
    test::finite_difference_check(variant(projection, "chunkwise"));
  }
  // Without a feature map, every option that still applies: learned weights on q and k, a trained
  // decay, per-head GroupNorm, the sequential residual.
  ModelConfig every = variant(FeatureProjection::None, "chunkwise");
  every.dijiang.feature_weights = true;
  every.dijiang.learnable_decay = true;
  every.dijiang.group_norm_per_head = true;
  every.use_parallel_residual = false;
  test::finite_difference_check(every);
}

TEST(AttentionVariants, ThreeFormsGiveTheSameLossAndGradients) {
  for (const FeatureProjection projection : {FeatureProjection::Gaussian, FeatureProjection::None}) {
    SCOPED_TRACE(std::string(choice_name(projection)));
    test::three_forms_agree(variant(projection, "chunkwise"));
  }
}

TEST(AttentionVariants, GaussianProjectionIsSeededGaussianTimesTheFrequencies) {
  DiJiangOptions options;
  options.projection = FeatureProjection::Gaussian;
  options.seed = 5;
  const int64_t d = 64;
  const std::vector<double> t = sample_feature_scales(options, d, 1);
  const std::vector<double> P = feature_projection(options, d, 1);
  ASSERT_EQ(P.size(), static_cast<size_t>(d * d));
  // P = G diag(t) / sqrt(d): undo the scales, and the entries are standard normal draws.
  double sum = 0, squares = 0;
  for (int64_t j = 0; j < d; ++j)
    for (int64_t k = 0; k < d; ++k) {
      const double g = P[static_cast<size_t>(j * d + k)] * std::sqrt(static_cast<double>(d)) / t[static_cast<size_t>(k)];
      sum += g;
      squares += g * g;
    }
  const double n = static_cast<double>(d * d), mean = sum / n, variance = squares / n - mean * mean;
  EXPECT_LT(std::abs(mean), 5.0 / std::sqrt(n));  // 5 standard errors
  EXPECT_NEAR(variance, 1.0, 0.1);
  // Deterministic for (seed, layer); another layer or seed draws another matrix, and it is not the DCT's.
  EXPECT_EQ(feature_projection(options, d, 1), P);
  EXPECT_NE(feature_projection(options, d, 2), P);
  DiJiangOptions other = options;
  other.seed = 6;
  EXPECT_NE(feature_projection(other, d, 1), P);
  DiJiangOptions dct = options;
  dct.projection = FeatureProjection::DCT;
  EXPECT_NE(feature_projection(dct, d, 1), P);
  DiJiangOptions none = options;
  none.projection = FeatureProjection::None;
  EXPECT_THROW(feature_projection(none, d, 1), Error);
}

TEST(AttentionVariants, WithoutAFeatureMapThereIsNoProjection) {
  const ModelConfig c = variant(FeatureProjection::None, "chunkwise");
  EXPECT_TRUE(c.is_dijiang());
  EXPECT_FALSE(c.has_feature_map());
  TensorMap tensors;
  add_dijiang_tensors(tensors, c, DType::F32);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    EXPECT_EQ(tensors.count(layer_prefix(l) + "attention.proj_matrix"), 0u);
    EXPECT_EQ(tensors.count(layer_prefix(l) + "attention.W_G"), 1u);
    EXPECT_EQ(tensors.count(layer_prefix(l) + "attention.log_gamma"), 1u);
  }
  const ParameterLayout layout = ParameterLayout::gpt_neox(c);
  EXPECT_FALSE(layout.contains("gpt_neox.layers.0.attention.proj_matrix"));
  EXPECT_EQ(layout.total(), c.parameter_count());
  const ModelConfig gaussian = variant(FeatureProjection::Gaussian, "chunkwise");
  EXPECT_EQ(ParameterLayout::gpt_neox(gaussian).total(), gaussian.parameter_count());
  EXPECT_EQ(gaussian.parameter_count() - c.parameter_count(), c.num_layers * c.head_dim() * c.head_dim());
  // The reference layout computes features: it cannot hold this model.
  try {
    export_interchange(tensors, c, DType::F32);
    ADD_FAILURE() << "a model without a feature map was exported in the reference layout";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has a feature map"), std::string::npos) << e.what();
  }
}

TEST(AttentionVariants, ConfigRecordsTheProjection) {
  for (const FeatureProjection projection :
       {FeatureProjection::DCT, FeatureProjection::Gaussian, FeatureProjection::None}) {
    SCOPED_TRACE(std::string(choice_name(projection)));
    ModelConfig c = variant(projection, "chunkwise");
    c.vocab_size = 50;
    const nlohmann::json json = c.to_hf_json();
    // A DiJiang model's config.json is what it was before the variants existed.
    EXPECT_EQ(json.at("dijiang").contains("projection"), projection != FeatureProjection::DCT);
    const ModelConfig back = ModelConfig::from_hf_json(json, "config.json");
    EXPECT_EQ(back.dijiang.projection, projection);
    EXPECT_EQ(back.has_feature_map(), projection != FeatureProjection::None);
  }
  nlohmann::json bad = variant(FeatureProjection::DCT, "chunkwise").to_hf_json();
  bad["dijiang"]["projection"] = "hadamard";
  try {
    ModelConfig::from_hf_json(bad, "config.json");
    ADD_FAILURE() << "an unknown projection was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("hadamard"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace dj
