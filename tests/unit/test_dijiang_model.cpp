// GPT-NeoX with DiJiang attention: whole-model gradients against fp64 finite differences, the
// three attention forms against each other, conversion initialisation, and the interchange layout.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "fixture_paths.h"
#include "kernels/core/error.h"
#include "model_test_support.h"
#include "trainer/data/npy.h"
#include "trainer/model/dijiang_tensors.h"
#include "trainer/model/evaluate.h"
#include "trainer/model/source.h"

namespace dj {
namespace {

ModelConfig tiny_dijiang(const std::string& form) {
  ModelConfig c = test::tiny_config(true, "gelu");
  c.attention = AttentionKind::DiJiang;
  c.dijiang.form = parse_choice<cpu::DecayForm>(form, "form", "test");
  c.dijiang.chunk = 4;  // sequences of 9 tokens: two full chunks and a short one
  return c;
}

TEST(DiJiangModel, FiniteDifferencesEveryForm) {
  for (const std::string form : {"parallel", "chunkwise", "recurrent"}) {
    SCOPED_TRACE(form);
    test::finite_difference_check(tiny_dijiang(form));
  }
}

TEST(DiJiangModel, FiniteDifferencesWithEveryOption) {
  ModelConfig c = tiny_dijiang("chunkwise");
  c.dijiang.feature_weights = true;
  c.dijiang.learnable_decay = true;
  c.dijiang.group_norm_per_head = true;
  c.use_parallel_residual = false;
  test::finite_difference_check(c);
}

TEST(DiJiangModel, ThreeFormsGiveTheSameLossAndGradients) { test::three_forms_agree(tiny_dijiang("chunkwise")); }

TEST(DiJiangModel, InverseNormalCdfIsAccurate) {
  EXPECT_NEAR(inverse_normal_cdf(0.5), 0.0, 1e-15);
  EXPECT_NEAR(inverse_normal_cdf(0.975), 1.959963984540054, 1e-14);
  EXPECT_NEAR(inverse_normal_cdf(0.001), -3.090232306167814, 1e-13);
  EXPECT_NEAR(inverse_normal_cdf(1e-10), -6.361340902404056, 1e-11);
  EXPECT_NEAR(inverse_normal_cdf(1.0 - 1e-6), 4.753424308822899, 1e-9);
  EXPECT_THROW(inverse_normal_cdf(0.0), Error);
}

TEST(DiJiangModel, QmcPointsAreAStratifiedPermutationAndDeterministic) {
  DiJiangOptions o;
  o.seed = 5;
  const int64_t d = 16;
  std::vector<double> t = sample_feature_scales(o, d, 2);
  EXPECT_EQ(t, sample_feature_scales(o, d, 2));
  EXPECT_NE(t, sample_feature_scales(o, d, 3));  // each layer has its own permutation
  std::sort(t.begin(), t.end());
  for (int64_t i = 0; i < d; ++i)
    EXPECT_NEAR(t[static_cast<size_t>(i)], inverse_normal_cdf((static_cast<double>(i) + 0.5) / d), 1e-15);
  o.sampling = FeatureSampling::MC;
  const std::vector<double> mc = sample_feature_scales(o, d, 2);
  EXPECT_EQ(mc, sample_feature_scales(o, d, 2));
  for (double v : mc) EXPECT_TRUE(std::isfinite(v));
}

TEST(DiJiangModel, ReferenceDecaySchedule) {
  const std::vector<double> g = reference_log_gamma(8);
  EXPECT_NEAR(std::exp(g.front()), 31.0 / 32.0, 1e-15);
  EXPECT_NEAR(std::exp(g.back()), 511.0 / 512.0, 1e-15);
  EXPECT_NEAR(std::exp(reference_log_gamma(1)[0]), 31.0 / 32.0, 1e-15);
}

TEST(DiJiangModel, ConversionInitialisesAsTheReferencePageSays) {
  ModelConfig c = tiny_dijiang("chunkwise");
  c.hidden_size = 64;
  c.num_heads = 4;
  TensorMap tensors;
  add_dijiang_tensors(tensors, c, DType::F64);
  const std::string p = "gpt_neox.layers.1.attention.";
  const std::vector<double> gate = tensors.at(p + "W_G").to_f64_vector();
  const double bound = std::pow(2.0, -2.5) * std::sqrt(6.0 / 128.0);
  double max_abs = 0.0, mean = 0.0;
  for (double w : gate) {
    max_abs = std::max(max_abs, std::abs(w));
    mean += w / static_cast<double>(gate.size());
  }
  EXPECT_LE(max_abs, bound);
  EXPECT_GE(max_abs, 0.95 * bound);
  EXPECT_LE(std::abs(mean), 0.05 * bound);
  for (double w : tensors.at(p + "group_norm.weight").to_f64_vector()) EXPECT_EQ(w, 1.0);
  for (double b : tensors.at(p + "group_norm.bias").to_f64_vector()) EXPECT_EQ(b, 0.0);
  // P = C · diag(t): its column norms are |t_j| because C is orthonormal.
  const std::vector<double> P = tensors.at(p + "proj_matrix").to_f64_vector();
  const std::vector<double> t = sample_feature_scales(c.dijiang, 16, 1);
  for (int64_t j = 0; j < 16; ++j) {
    double norm = 0.0;
    for (int64_t k = 0; k < 16; ++k) norm += P[static_cast<size_t>(k * 16 + j)] * P[static_cast<size_t>(k * 16 + j)];
    EXPECT_NEAR(std::sqrt(norm), std::abs(t[static_cast<size_t>(j)]), 1e-12);
  }
}

// Converts the parallel-residual fixture model and evaluates the eval tokens: float with the
// chunkwise form against a pure fp64 evaluation with the parallel (reference) form.
TEST(DiJiangModel, ConvertedFixtureFloatChunkwiseMatchesFp64Parallel) {
  ModelSource source = read_model_source(test::fixture("neox_parallel/f32"));
  source.config.attention = AttentionKind::DiJiang;
  source.config.dijiang.chunk = 16;
  add_dijiang_tensors(source.tensors, source.config, DType::F32);
  const std::vector<int32_t> ids = read_npy_tokens(test::fixture("neox_parallel/eval_tokens.npy"));
  const EvalResult chunkwise = evaluate_windows<float>(source, ids, 100, 4);
  source.config.dijiang.form = cpu::DecayForm::Parallel;
  const EvalResult exact = evaluate_windows<double>(source, ids, 100, 4);
  ASSERT_EQ(chunkwise.predicted, exact.predicted);
  EXPECT_LE(std::abs(chunkwise.loss_sum - exact.loss_sum) / exact.loss_sum, 1e-6);
}

TEST(DiJiangModel, InterchangeRoundTripAndRefusals) {
  ModelConfig c = tiny_dijiang("chunkwise");
  c.max_position_embeddings = 64;
  TensorMap tensors;
  add_dijiang_tensors(tensors, c, DType::F32);
  TensorMap exported = export_interchange(tensors, c, DType::F32);
  EXPECT_EQ(exported.count("gpt_neox.layers.0.attention.log_gamma"), 0u);
  const std::vector<double> d1 = exported.at("gpt_neox.layers.0.attention.D1").to_f64_vector();
  EXPECT_EQ(exported.at("gpt_neox.layers.0.attention.D1").shape(), (Shape{1, 3, 64, 1}));
  EXPECT_EQ(d1[0], 1.0);
  EXPECT_NEAR(d1[1], 31.0 / 32.0, 1e-7);

  ModelConfig imported_config = test::tiny_config(true, "gelu");
  imported_config.max_position_embeddings = 64;
  TensorMap imported = exported;
  import_interchange(imported, imported_config, "dir");
  EXPECT_TRUE(imported_config.is_dijiang());
  const std::vector<double> before = tensors.at("gpt_neox.layers.1.attention.log_gamma").to_f64_vector();
  const std::vector<double> after = imported.at("gpt_neox.layers.1.attention.log_gamma").to_f64_vector();
  // D1 is float32: the farthest entry (i = 63) carries 6e-8 relative rounding, 1e-9 in log γ.
  for (size_t h = 0; h < before.size(); ++h) EXPECT_NEAR(after[h], before[h], 2e-9);

  // Tensor copies share storage: give each damaged map its own copy of the damaged table.
  TensorMap bent = exported;
  bent.at("gpt_neox.layers.0.attention.D1") = exported.at("gpt_neox.layers.0.attention.D1").to(DType::F32);
  Tensor& table = bent.at("gpt_neox.layers.0.attention.D1");
  table.data<float>()[10] *= 1.5f;
  try {
    import_interchange(bent, imported_config, "dir");
    ADD_FAILURE() << "a bent D1 table was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not geometric"), std::string::npos) << e.what();
  }

  TensorMap bad_inverse = exported;
  bad_inverse.at("gpt_neox.layers.1.attention.D2") = exported.at("gpt_neox.layers.1.attention.D2").to(DType::F32);
  bad_inverse.at("gpt_neox.layers.1.attention.D2").data<float>()[5] *= 1.1f;
  try {
    import_interchange(bad_inverse, imported_config, "dir");
    ADD_FAILURE() << "a D2 table that is not the inverse of D1 was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not the inverse of D1"), std::string::npos) << e.what();
  }

  ModelConfig weighted = c;
  weighted.dijiang.feature_weights = true;
  EXPECT_THROW(export_interchange(tensors, weighted, DType::F32), Error);
  ModelConfig per_head = c;
  per_head.dijiang.group_norm_per_head = true;
  EXPECT_THROW(export_interchange(tensors, per_head, DType::F32), Error);
}

}  // namespace
}  // namespace dj
