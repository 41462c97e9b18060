// The DiJiang CPU kernels (kernels/cpu/dijiang.h): the three decay-attention forms against each
// other and against a literal evaluation of the reference equations, finite-difference checks of
// every gradient, a long float sequence and determinism. Decoding, the DCT projection and the
// feature map's values: test_dijiang_values.cpp.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/core/error.h"
#include "kernels/cpu/dijiang.h"
#include "tests/unit/dijiang_test_support.h"
#include "tests/unit/gradcheck.h"

namespace dj {
namespace {

using cpu::DecayForm;
using namespace test;

constexpr double kGradTolerance = 1e-6;

struct Run {
  DecayForm form;
  int64_t chunk;
};
const std::vector<Run> kRuns = {{DecayForm::Parallel, 0},    {DecayForm::Recurrent, 0},
                                {DecayForm::Chunkwise, 1},   {DecayForm::Chunkwise, 3},
                                {DecayForm::Chunkwise, 16},  {DecayForm::Chunkwise, 64},
                                {DecayForm::Chunkwise, 128}};

// Every run of kRuns in double (but the reference) and float against the double parallel form.
void expect_forms_agree(const Inputs& in, const Problem& p, const std::string& gamma) {
  const Outputs want = run_form<double>(in, p, DecayForm::Parallel, 0);
  for (const Run& run : kRuns) {
    const std::string context = form_name(run.form, run.chunk) + ", " + p.str() + ", " + gamma;
    if (run.form != DecayForm::Parallel)
      expect_outputs_close(run_form<double>(in, p, run.form, run.chunk), want, 1e-10,
                           "double " + context);
    expect_outputs_close(run_form<float>(in, p, run.form, run.chunk), want, 1e-5,
                         "float " + context);
  }
}

// Sequence lengths 1, below a chunk, k chunks and k chunks ± 1 for chunks 3, 16 and 64, one
// head and several, odd feature and value sizes; m = dv = 80 (Pythia-2.8B's head size) and
// chunk 128 make products large enough to be cut into pieces (serial_gemm).
TEST(DiJiangDecayForms, AgreeForwardAndBackward) {
  const std::vector<Problem> problems = {
      {1, 1, 1, 5, 7},   {2, 3, 5, 7, 5},  {1, 2, 47, 16, 7}, {2, 1, 48, 5, 5},
      {1, 3, 49, 7, 16}, {1, 2, 63, 8, 8}, {2, 2, 64, 5, 7},  {1, 1, 65, 7, 5},
      {1, 2, 130, 16, 16}, {1, 2, 200, 80, 80}};
  uint64_t seed = 100;
  for (const Problem& p : problems)
    for (const bool schedule_gamma : {true, false})
      expect_forms_agree(make_inputs(p, seed += 10, schedule_gamma), p,
                         schedule_gamma ? "schedule γ" : "random γ");
}

// γ = 0.5 underflows float after 126 positions (double after 1022): the flushed powers and the
// skipped tiles of the parallel form must not change any result.
TEST(DiJiangDecayForms, AgreeWhereTheDecayUnderflows) {
  const Problem p{2, 2, 300, 8, 8};
  Inputs in = make_inputs(p, 150, false);
  in.log_gamma = {static_cast<float>(std::log(0.5)), static_cast<float>(std::log(0.9))};
  expect_forms_agree(in, p, "γ = 0.5, 0.9");
}

// ---------------------------------------------------------------------------------------------
// Finite differences (fp64) of every gradient.

using test::pack;
using test::Packed;

// Checks each part on its own, so that each gradient is judged against its own scale (dlog γ
// is a sum over all positions and far larger than the others).
void expect_gradients(const std::function<double(std::vector<double>&)>& loss, Packed& p,
                      const std::vector<double>& analytic, const std::vector<std::string>& names,
                      const std::string& context) {
  for (size_t part = 0; part < names.size(); ++part) {
    test::GradCheckOptions options;
    for (size_t i = p.offsets[part]; i < p.offsets[part + 1]; ++i) options.indices.push_back(i);
    const auto r = gradcheck(loss, p.values, analytic, options);
    EXPECT_LE(r.max_error, kGradTolerance) << r << " (" << names[part] << ", " << context << ")";
  }
}

TEST(DiJiangGradcheck, DecayAttention) {
  struct Case {
    DecayForm form;
    int64_t chunk, n;
  };
  // n = 70 spans two tiles of the parallel form; n = 11 leaves a ragged last chunk of 4.
  const std::vector<Case> cases = {{DecayForm::Parallel, 0, 11},   {DecayForm::Parallel, 0, 70},
                                   {DecayForm::Recurrent, 0, 11},  {DecayForm::Chunkwise, 4, 11},
                                   {DecayForm::Chunkwise, 1, 5},   {DecayForm::Chunkwise, 16, 70}};
  for (const Case& c : cases) {
    const Problem p{2, 2, c.n, 3, 2};
    const auto rows = static_cast<size_t>(p.BH() * p.n);
    const auto R = random_vector(rows * p.dv, 200);
    Packed packed = pack({random_vector(rows * p.m, 201, 0.0, 1.0),
                          random_vector(rows * p.m, 202, 0.0, 1.0), random_vector(rows * p.dv, 203),
                          random_log_gamma(p.H, 204)});
    const size_t q_at = packed.offsets[0], k_at = packed.offsets[1], v_at = packed.offsets[2],
                 g_at = packed.offsets[3];
    auto loss = [&](std::vector<double>& x) {
      std::vector<double> o(rows * p.dv);
      cpu::decay_attention_forward(o.data(), x.data() + q_at, x.data() + k_at, x.data() + v_at,
                                   x.data() + g_at, p.BH(), p.H, p.n, p.m, p.dv, c.form, c.chunk);
      return dot(R, o);
    };
    std::vector<double> grad(packed.values.size(), 0.0);
    const double* x = packed.values.data();
    cpu::decay_attention_backward(grad.data() + q_at, grad.data() + k_at, grad.data() + v_at,
                                  grad.data() + g_at, R.data(), x + q_at, x + k_at, x + v_at,
                                  x + g_at, p.BH(), p.H, p.n, p.m, p.dv, c.form, c.chunk);
    expect_gradients(loss, packed, grad, {"fq", "fk", "v", "log_gamma"},
                     form_name(c.form, c.chunk) + ", n " + std::to_string(c.n));
  }
}

TEST(DiJiangGradcheck, FeatureMap) {
  const int64_t rows = 5, d = 7;
  const auto t = random_vector(d, 300, -2.0, 2.0);
  std::vector<double> P(d * d);
  cpu::dct_projection(P.data(), t.data(), d);
  const auto R = random_vector(rows * d, 301);
  auto x = random_vector(rows * d, 302, -2.0, 2.0);
  std::vector<double> s(rows * d);
  auto loss = [&](std::vector<double>& v) {
    cpu::feature_map_forward(s.data(), v.data(), P.data(), rows, d);
    return dot(R, s);
  };
  loss(x);  // leaves s of the unperturbed input
  std::vector<double> grad(x.size());
  cpu::feature_map_backward(grad.data(), R.data(), s.data(), P.data(), rows, d);
  const auto r = gradcheck(loss, x, grad);
  EXPECT_LE(r.max_error, kGradTolerance) << r;
}

TEST(DiJiangGradcheck, FeatureWeights) {
  const int64_t BH = 4, H = 2, n = 3, d = 5;
  const auto R = random_vector(BH * n * d, 400);
  Packed p = pack({random_vector(BH * n * d, 401, 0.0, 1.0), random_vector(H * d, 402, 0.5, 1.5)});
  const size_t s_at = p.offsets[0], w_at = p.offsets[1];
  auto loss = [&](std::vector<double>& v) {
    std::vector<double> phi(BH * n * d);
    cpu::feature_weights_forward(phi.data(), v.data() + s_at, v.data() + w_at, BH, H, n, d);
    return dot(R, phi);
  };
  std::vector<double> grad(p.values.size(), 0.0);
  const double* v = p.values.data();
  cpu::feature_weights_backward(grad.data() + s_at, grad.data() + w_at, R.data(), v + s_at,
                                v + w_at, BH, H, n, d);
  expect_gradients(loss, p, grad, {"s", "w"}, "feature weights");
}

// groups = d (the DiJiang default: groups of H channels that mix heads) and groups = H.
TEST(DiJiangGradcheck, GroupNorm) {
  const int64_t rows = 3, H = 3, d = 4, channels = H * d;
  for (const int64_t groups : {d, H}) {
    const auto R = random_vector(rows * channels, 500);
    // An offset per channel makes the group means matter.
    auto x = random_vector(rows * channels, 501);
    for (int64_t i = 0; i < rows * channels; ++i) x[i] += static_cast<double>(i % channels) / 3.0;
    Packed p = pack({x, random_vector(channels, 502, 0.5, 1.5), random_vector(channels, 503)});
    const size_t x_at = p.offsets[0], w_at = p.offsets[1], b_at = p.offsets[2];
    std::vector<double> mean(rows * groups), rstd(rows * groups);
    auto loss = [&](std::vector<double>& v) {
      std::vector<double> y(rows * channels);
      cpu::group_norm_forward(y.data(), mean.data(), rstd.data(), v.data() + x_at,
                              v.data() + w_at, v.data() + b_at, rows, channels, groups, 1e-5);
      return dot(R, y);
    };
    loss(p.values);  // leaves mean and rstd of the unperturbed input
    std::vector<double> grad(p.values.size(), 0.0);
    const double* v = p.values.data();
    cpu::group_norm_backward(grad.data() + x_at, grad.data() + w_at, grad.data() + b_at, R.data(),
                             v + x_at, v + w_at, mean.data(), rstd.data(), rows, channels, groups);
    expect_gradients(loss, p, grad, {"x", "w", "b"}, "groups " + std::to_string(groups));
  }
}

TEST(DiJiangGradcheck, SiluGate) {
  const int64_t n = 41;
  const auto R = random_vector(n, 600);
  Packed p = pack({random_vector(n, 601, -6.0, 6.0), random_vector(n, 602)});
  const size_t g_at = p.offsets[0], x_at = p.offsets[1];
  auto loss = [&](std::vector<double>& v) {
    std::vector<double> y(n);
    cpu::silu_gate_forward(y.data(), v.data() + g_at, v.data() + x_at, n);
    return dot(R, y);
  };
  std::vector<double> grad(p.values.size());
  const double* v = p.values.data();
  cpu::silu_gate_backward(grad.data() + g_at, grad.data() + x_at, R.data(), v + g_at, v + x_at, n);
  expect_gradients(loss, p, grad, {"g", "x"}, "silu gate");
}

// ---------------------------------------------------------------------------------------------
// The reference equations, literally (docs/method.md, section 2 steps 3-6): the
// position tables D1[h][i] = γ_h^i, D2[h][j] = γ_h^(−j) and the full masked n x n matrix
// A_ij = ⟨φ(q_i), φ(k_j)⟩ D1[i] D2[j] (j <= i), o = A v, with φ(x) = softmax(x · P). γ^(−j) is
// harmless in double at these lengths (γ^(−256) < 4e3 for the schedule's smallest γ, 31/32).

TEST(DiJiangReference, LiteralEquationsMatchFeatureMapAndEveryForm) {
  const int64_t B = 1, H = 2, d = 16, BH = B * H;
  std::mt19937_64 gen(700);
  std::normal_distribution<double> normal;
  std::vector<double> t(d);
  for (double& value : t) value = normal(gen);  // t_i = Φ⁻¹(u_i), u_i ~ U(0, 1) (the "mc" method)
  std::vector<double> P(d * d);
  cpu::dct_projection(P.data(), t.data(), d);
  const std::vector<double> log_gamma = schedule_log_gamma(H);

  for (const int64_t n : {100, 256}) {
    const auto q = random_vector(BH * n * d, 701, -2.0, 2.0);
    const auto k = random_vector(BH * n * d, 702, -2.0, 2.0);
    const auto v = random_vector(BH * n * d, 703);

    std::vector<double> want(BH * n * d, 0.0);
    for (int64_t bh = 0; bh < BH; ++bh) {
      const double gamma = std::exp(log_gamma[bh % H]);
      std::vector<double> D1(n), D2(n);
      for (int64_t i = 0; i < n; ++i) {
        D1[i] = std::pow(gamma, static_cast<double>(i));
        D2[i] = std::pow(gamma, -static_cast<double>(i));
      }
      std::vector<std::vector<double>> phi_q, phi_k;
      for (int64_t i = 0; i < n; ++i) {
        phi_q.push_back(literal_features(q.data() + (bh * n + i) * d, P, d));
        phi_k.push_back(literal_features(k.data() + (bh * n + i) * d, P, d));
      }
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j <= i; ++j) {
          const double A = dot(phi_q[i], phi_k[j]) * D1[i] * D2[j];
          for (int64_t e = 0; e < d; ++e) want[(bh * n + i) * d + e] += A * v[(bh * n + j) * d + e];
        }
    }

    std::vector<double> fq(q.size()), fk(k.size());
    cpu::feature_map_forward(fq.data(), q.data(), P.data(), BH * n, d);
    cpu::feature_map_forward(fk.data(), k.data(), P.data(), BH * n, d);
    for (const auto& [form, chunk] : {std::pair{DecayForm::Parallel, int64_t{0}},
                                      std::pair{DecayForm::Recurrent, int64_t{0}},
                                      std::pair{DecayForm::Chunkwise, int64_t{16}},
                                      std::pair{DecayForm::Chunkwise, int64_t{64}}}) {
      std::vector<double> o(v.size());
      cpu::decay_attention_forward(o.data(), fq.data(), fk.data(), v.data(), log_gamma.data(), BH,
                                   H, n, d, d, form, chunk);
      EXPECT_LE(l2_relative(o, want), 1e-10) << form_name(form, chunk) << ", n " << n;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// A long sequence in float: γ = 31/32 would overflow γ^(−j) in float after ~2.8k tokens; the
// relative-exponent forms must stay finite and accurate at 16k.
TEST(DiJiangLongSequence, Float16kTokensFiniteAndAccurate) {
  const Problem p{1, 1, 16384, 64, 64};
  const int64_t rows = p.n;
  // Features from the real feature map of random inputs.
  std::vector<double> t = random_vector(p.m, 800, -1.5, 1.5);
  std::vector<double> P(p.m * p.m);
  cpu::dct_projection(P.data(), t.data(), p.m);
  Inputs in;
  in.fq.resize(rows * p.m);
  in.fk.resize(rows * p.m);
  const auto q = random_vector(rows * p.m, 801, -2.0, 2.0);
  const auto k = random_vector(rows * p.m, 802, -2.0, 2.0);
  cpu::feature_map_forward(in.fq.data(), q.data(), P.data(), rows, p.m);
  cpu::feature_map_forward(in.fk.data(), k.data(), P.data(), rows, p.m);
  in.v = random_vector(rows * p.dv, 803);
  in.dout = random_vector(rows * p.dv, 804);
  in.log_gamma = {std::log(31.0 / 32.0)};
  for (auto* v : {&in.fq, &in.fk, &in.v, &in.dout, &in.log_gamma})
    for (double& x : *v) x = static_cast<float>(x);

  const Outputs want = run_form<double>(in, p, DecayForm::Chunkwise, 64);
  const Outputs chunkwise = run_form<float>(in, p, DecayForm::Chunkwise, 64);
  const Outputs recurrent = run_form<float>(in, p, DecayForm::Recurrent, 0);
  for (const Outputs* out : {&chunkwise, &recurrent})
    for (const auto* v : {&out->o, &out->dfq, &out->dfk, &out->dv, &out->dlog_gamma})
      EXPECT_TRUE(all_finite(*v));
  expect_outputs_close(chunkwise, want, 1e-5, "float chunkwise vs double");
  expect_outputs_close(recurrent, want, 1e-5, "float recurrent vs double");
  expect_outputs_close(chunkwise, recurrent, 1e-5, "float chunkwise vs float recurrent");
}

// ---------------------------------------------------------------------------------------------
// Determinism and errors.

// Results must not depend on the thread count: every row of work has one fixed order.
TEST(DiJiangDeterminism, BitIdenticalAcrossThreadCounts) {
  const Problem p{2, 3, 200, 16, 16};  // above the kernels' parallel thresholds
  const Inputs in = make_inputs(p, 1200, true);
  // Every output of every kernel with a parallel path, as one list of vectors.
  auto run_all = [&] {
    std::vector<std::vector<double>> results;
    for (const auto& [form, chunk] : {std::pair{DecayForm::Parallel, int64_t{0}},
                                      std::pair{DecayForm::Chunkwise, int64_t{64}},
                                      std::pair{DecayForm::Recurrent, int64_t{0}}}) {
      Outputs out = run_form<float>(in, p, form, chunk);
      for (auto* v : {&out.o, &out.dfq, &out.dfk, &out.dv, &out.dlog_gamma})
        results.push_back(std::move(*v));
    }

    const int64_t rows = 600, H = 4, d = 32, channels = H * d;
    const auto x = cast_vector<float>(random_vector(rows * channels, 1201));
    const auto dy = cast_vector<float>(random_vector(rows * channels, 1202));
    const std::vector<float> w(channels, 1.5f), b(channels, 0.25f);
    std::vector<float> y(x.size()), mean(rows * d), rstd(rows * d), dx(x.size());
    std::vector<float> dw(channels, 0.0f), db(channels, 0.0f);
    cpu::group_norm_forward(y.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), rows,
                            channels, d, 1e-5);
    cpu::group_norm_backward(dx.data(), dw.data(), db.data(), dy.data(), x.data(), w.data(),
                             mean.data(), rstd.data(), rows, channels, d);
    // Feature weights with 2 heads over rows of `channels` features.
    std::vector<float> ds(x.size()), dfw(2 * channels, 0.0f);
    const std::vector<float> fw(2 * channels, 0.75f);
    cpu::feature_weights_backward(ds.data(), dfw.data(), dy.data(), x.data(), fw.data(), 4, 2,
                                  rows / 4, channels);
    for (const auto* v : {&y, &dx, &dw, &db, &ds, &dfw}) results.push_back(cast_vector<double>(*v));
    return results;
  };
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run_all();
  omp_set_num_threads(2);
  const auto two = run_all();
  omp_set_num_threads(saved);
  ASSERT_EQ(one.size(), two.size());
  for (size_t i = 0; i < one.size(); ++i) EXPECT_EQ(one[i], two[i]) << "output " << i;
}

TEST(DiJiangErrors, RejectsBadChunkAndGroups) {
  std::vector<float> buffer(64, 0.0f);
  const float log_gamma = -0.1f;
  float* b = buffer.data();
  EXPECT_THROW(cpu::decay_attention_forward(b, b, b, b, &log_gamma, 1, 1, 2, 2, 2,
                                            DecayForm::Chunkwise, 0),
               Error);
  EXPECT_THROW(cpu::decay_attention_backward(b, b, b, b, b, b, b, b, &log_gamma, 1, 1, 2, 2, 2,
                                             DecayForm::Chunkwise, 0),
               Error);
  EXPECT_THROW(cpu::decay_attention_prefill_state(b, b, b, &log_gamma, 1, 1, 2, 2, 2, 0), Error);
  EXPECT_THROW(cpu::group_norm_forward(b, b, b, b, b, b, 1, 6, 4, 1e-5), Error);
  EXPECT_THROW(cpu::group_norm_backward(b, b, b, b, b, b, b, b, 1, 6, 4), Error);
}

}  // namespace
}  // namespace dj
