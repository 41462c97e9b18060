// The DiJiang CPU kernels' values: decoding steps against the forward and the prefill state, the
// DCT projection, and the feature map (kernels/cpu/dijiang.h).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>
#include <vector>

#include "kernels/cpu/dijiang.h"
#include "tests/unit/dijiang_test_support.h"
#include "tests/unit/gradcheck.h"

namespace dj {
namespace {

using cpu::DecayForm;
using namespace test;

// ---------------------------------------------------------------------------------------------
// Decoding: steps reproduce the forward, prefill equals the stepped state, and steps continue a
// prefilled state.

template <typename T>
void check_decoding(double tolerance) {
  const Problem p{2, 3, 37, 5, 7};
  const int64_t BH = p.BH(), prefix = 20;
  const Inputs in = make_inputs(p, 900, false);
  const auto fq = cast_vector<T>(in.fq), fk = cast_vector<T>(in.fk), v = cast_vector<T>(in.v);
  const auto log_gamma = cast_vector<T>(in.log_gamma);
  const std::vector<double> want = run_form<double>(in, p, DecayForm::Parallel, 0).o;

  // Runs the steps for positions [from, n) from `state`; returns the outputs of those positions.
  auto run_steps = [&](std::vector<T>& state, int64_t from) {
    std::vector<double> outputs(BH * p.n * p.dv, 0.0);
    std::vector<T> q(BH * p.m), k(BH * p.m), x(BH * p.dv), o(BH * p.dv);
    for (int64_t i = from; i < p.n; ++i) {
      for (int64_t bh = 0; bh < BH; ++bh) {
        std::copy_n(fq.begin() + (bh * p.n + i) * p.m, p.m, q.begin() + bh * p.m);
        std::copy_n(fk.begin() + (bh * p.n + i) * p.m, p.m, k.begin() + bh * p.m);
        std::copy_n(v.begin() + (bh * p.n + i) * p.dv, p.dv, x.begin() + bh * p.dv);
      }
      cpu::decay_attention_step(o.data(), state.data(), q.data(), k.data(), x.data(),
                                log_gamma.data(), BH, p.H, p.m, p.dv);
      for (int64_t bh = 0; bh < BH; ++bh)
        std::copy_n(o.begin() + bh * p.dv, p.dv, outputs.begin() + (bh * p.n + i) * p.dv);
    }
    return outputs;
  };

  std::vector<T> stepped(BH * p.m * p.dv, T(0));
  EXPECT_LE(relative_difference(run_steps(stepped, 0), want), tolerance) << "steps from 0";

  for (const int64_t chunk : {1, 4, 16, 64}) {
    std::vector<T> state(stepped.size(), T(-1));  // overwritten, not accumulated
    cpu::decay_attention_prefill_state(state.data(), fk.data(), v.data(), log_gamma.data(), BH,
                                       p.H, p.n, p.m, p.dv, chunk);
    EXPECT_LE(relative_difference(cast_vector<double>(state), cast_vector<double>(stepped)),
              tolerance)
        << "prefill of " << p.n << " tokens, chunk " << chunk;
  }

  // Prefill the first `prefix` positions (rows of length n read only up to prefix, so the rows
  // are copied out), then decode the rest.
  std::vector<T> fk_prefix(BH * prefix * p.m), v_prefix(BH * prefix * p.dv);
  for (int64_t bh = 0; bh < BH; ++bh) {
    std::copy_n(fk.begin() + bh * p.n * p.m, prefix * p.m, fk_prefix.begin() + bh * prefix * p.m);
    std::copy_n(v.begin() + bh * p.n * p.dv, prefix * p.dv, v_prefix.begin() + bh * prefix * p.dv);
  }
  std::vector<T> state(stepped.size());
  cpu::decay_attention_prefill_state(state.data(), fk_prefix.data(), v_prefix.data(),
                                     log_gamma.data(), BH, p.H, prefix, p.m, p.dv, 16);
  const std::vector<double> continued = run_steps(state, prefix);
  std::vector<double> want_tail(want.size(), 0.0);
  for (int64_t bh = 0; bh < BH; ++bh)
    for (int64_t i = prefix; i < p.n; ++i)
      for (int64_t e = 0; e < p.dv; ++e)
        want_tail[(bh * p.n + i) * p.dv + e] = want[(bh * p.n + i) * p.dv + e];
  EXPECT_LE(relative_difference(continued, want_tail), tolerance) << "prefill then steps";
}

TEST(DiJiangDecoding, StepsMatchForwardAndPrefill) {
  check_decoding<double>(1e-12);
  check_decoding<float>(1e-5);
}

// ---------------------------------------------------------------------------------------------
// The DCT projection and the feature map's values.

TEST(DiJiangDct, OrthonormalDctTwoTimesDiagonal) {
  for (const int64_t d : {1, 7, 64}) {
    const std::vector<double> ones(d, 1.0);
    std::vector<double> C(d * d);
    cpu::dct_projection(C.data(), ones.data(), d);
    double worst_identity = 0.0, worst_definition = 0.0;
    for (int64_t a = 0; a < d; ++a)
      for (int64_t b = 0; b < d; ++b) {
        double sum = 0.0;
        for (int64_t j = 0; j < d; ++j) sum += C[a * d + j] * C[b * d + j];
        worst_identity = std::max(worst_identity, std::abs(sum - (a == b ? 1.0 : 0.0)));
        // DCT-II: C[k][j] = s_k cos(π (j + 1/2) k / d), evaluated in long double.
        const long double scale = std::sqrt((a == 0 ? 1.0L : 2.0L) / static_cast<long double>(d));
        const long double angle = std::numbers::pi_v<long double> * (b + 0.5L) * a / d;
        const long double entry = scale * std::cos(angle);
        worst_definition =
            std::max(worst_definition, static_cast<double>(std::abs(C[a * d + b] - entry)));
      }
    EXPECT_LE(worst_identity, 1e-14) << "C Cᵀ = I, d " << d;
    EXPECT_LE(worst_definition, 1e-15) << "DCT-II definition, d " << d;

    const auto t = random_vector(d, 1000 + d, -3.0, 3.0);
    std::vector<double> P(d * d);
    cpu::dct_projection(P.data(), t.data(), d);
    std::vector<float> P_float(d * d);
    cpu::dct_projection(P_float.data(), t.data(), d);
    for (int64_t k = 0; k < d; ++k)
      for (int64_t j = 0; j < d; ++j) {
        EXPECT_NEAR(P[k * d + j], C[k * d + j] * t[j], 1e-15) << "P = C diag(t), d " << d;
        EXPECT_EQ(P_float[k * d + j], static_cast<float>(P[k * d + j])) << "float P, d " << d;
      }
  }
}

// Rows sum to 1, large inputs do not overflow (max subtraction), float matches double.
TEST(DiJiangFeatureMap, SoftmaxOfProjection) {
  const int64_t rows = 300, d = 64;
  const auto t = random_vector(d, 1100, -2.0, 2.0);
  std::vector<double> P(d * d);
  cpu::dct_projection(P.data(), t.data(), d);
  auto x = random_vector(rows * d, 1101, -3.0, 3.0);
  for (int64_t j = 0; j < d; ++j) x[j] *= 100.0;  // scores in the hundreds
  std::vector<double> s(rows * d);
  cpu::feature_map_forward(s.data(), x.data(), P.data(), rows, d);
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0;
    for (int64_t j = 0; j < d; ++j) sum += s[r * d + j];
    EXPECT_NEAR(sum, 1.0, 1e-14) << "row " << r;
  }
  EXPECT_TRUE(all_finite(s));
  EXPECT_NEAR(s[0], literal_features(x.data(), P, d)[0], 1e-15);

  const auto xf = cast_vector<float>(x);
  std::vector<float> Pf(d * d), sf(rows * d);
  cpu::dct_projection(Pf.data(), t.data(), d);
  cpu::feature_map_forward(sf.data(), xf.data(), Pf.data(), rows, d);
  // Scores of ~300 carry float rounding of ~300 * 6e-8 in the exponent.
  EXPECT_LE(relative_difference(sf, s), 1e-4);
  std::vector<double> rest_s(s.begin() + d, s.end());
  std::vector<float> rest_sf(sf.begin() + d, sf.end());
  EXPECT_LE(relative_difference(rest_sf, rest_s), 1e-5);
}

}  // namespace
}  // namespace dj
