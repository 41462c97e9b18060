// The DiJiang CPU kernels (kernels/cpu/dijiang.h): the three decay-attention forms against each
// other and against a literal evaluation of the reference equations, finite-difference checks of
// every gradient, a long float sequence, decoding, the DCT projection and determinism.
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
#include "tests/unit/gradcheck.h"

namespace dj {
namespace {

using cpu::DecayForm;
using test::cast_vector;
using test::dot;
using test::gradcheck;
using test::random_vector;
using test::relative_difference;

constexpr double kGradTolerance = 1e-6;

// ‖a − b‖ / ‖b‖.
double l2_relative(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff += (a.at(i) - b[i]) * (a.at(i) - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-300);
}

bool all_finite(const std::vector<double>& v) {
  for (const double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// log γ_h of the reference schedule (section 2 step 5): γ_h = 1 − exp(ℓ_h),
// ℓ = linspace(log(1/32), log(1/512), H), ℓ = log(1/32) for H = 1.
std::vector<double> schedule_log_gamma(int64_t H) {
  const double first = std::log(1.0 / 32.0), last = std::log(1.0 / 512.0);
  std::vector<double> log_gamma(static_cast<size_t>(H));
  for (int64_t h = 0; h < H; ++h) {
    const double l = H == 1 ? first : first + (last - first) * static_cast<double>(h) /
                                                  static_cast<double>(H - 1);
    log_gamma[static_cast<size_t>(h)] = std::log1p(-std::exp(l));
  }
  return log_gamma;
}

// log γ with γ uniform in (0.5, 0.999).
std::vector<double> random_log_gamma(int64_t H, uint64_t seed) {
  std::vector<double> log_gamma = random_vector(static_cast<size_t>(H), seed, 0.5, 0.999);
  for (double& g : log_gamma) g = std::log(g);
  return log_gamma;
}

std::string form_name(DecayForm form, int64_t chunk) {
  switch (form) {
    case DecayForm::Parallel:
      return "parallel";
    case DecayForm::Recurrent:
      return "recurrent";
    case DecayForm::Chunkwise:
      return "chunkwise(" + std::to_string(chunk) + ")";
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Decayed attention: one problem, run through any form in float or double.

struct Problem {
  int64_t B, H, n, m, dv;
  int64_t BH() const { return B * H; }
  std::string str() const {
    return "B " + std::to_string(B) + ", H " + std::to_string(H) + ", n " + std::to_string(n) +
           ", m " + std::to_string(m) + ", dv " + std::to_string(dv);
  }
};

struct Inputs {
  std::vector<double> fq, fk, v, dout, log_gamma;
};

// Features are positive with mean row sum 1, like softmax features; v and dO are signed. Every
// value is rounded to float so that float and double runs see the same inputs.
Inputs make_inputs(const Problem& p, uint64_t seed, bool schedule_gamma) {
  const auto rows = static_cast<size_t>(p.BH() * p.n);
  const double feature_max = 2.0 / static_cast<double>(p.m);
  Inputs in{random_vector(rows * p.m, seed, 0.0, feature_max),
            random_vector(rows * p.m, seed + 1, 0.0, feature_max),
            random_vector(rows * p.dv, seed + 2), random_vector(rows * p.dv, seed + 3),
            schedule_gamma ? schedule_log_gamma(p.H) : random_log_gamma(p.H, seed + 4)};
  for (auto* v : {&in.fq, &in.fk, &in.v, &in.dout, &in.log_gamma})
    for (double& x : *v) x = static_cast<float>(x);
  return in;
}

struct Outputs {
  std::vector<double> o, dfq, dfk, dv, dlog_gamma;
};

template <typename T>
Outputs run_form(const Inputs& in, const Problem& p, DecayForm form, int64_t chunk) {
  const auto fq = cast_vector<T>(in.fq), fk = cast_vector<T>(in.fk), v = cast_vector<T>(in.v);
  const auto dout = cast_vector<T>(in.dout), log_gamma = cast_vector<T>(in.log_gamma);
  std::vector<T> o(v.size()), dfq(fq.size()), dfk(fk.size()), dv(v.size());
  std::vector<T> dlog_gamma(log_gamma.size(), T(0));
  cpu::decay_attention_forward(o.data(), fq.data(), fk.data(), v.data(), log_gamma.data(), p.BH(),
                               p.H, p.n, p.m, p.dv, form, chunk);
  cpu::decay_attention_backward(dfq.data(), dfk.data(), dv.data(), dlog_gamma.data(), dout.data(),
                                fq.data(), fk.data(), v.data(), log_gamma.data(), p.BH(), p.H,
                                p.n, p.m, p.dv, form, chunk);
  return {cast_vector<double>(o), cast_vector<double>(dfq), cast_vector<double>(dfk),
          cast_vector<double>(dv), cast_vector<double>(dlog_gamma)};
}

void expect_outputs_close(const Outputs& got, const Outputs& want, double tolerance,
                          const std::string& context) {
  EXPECT_LE(l2_relative(got.o, want.o), tolerance) << "o, " << context;
  EXPECT_LE(l2_relative(got.dfq, want.dfq), tolerance) << "dfq, " << context;
  EXPECT_LE(l2_relative(got.dfk, want.dfk), tolerance) << "dfk, " << context;
  EXPECT_LE(l2_relative(got.dv, want.dv), tolerance) << "dv, " << context;
  EXPECT_LE(l2_relative(got.dlog_gamma, want.dlog_gamma), tolerance) << "dlog_gamma, " << context;
}

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

// φ(x) = softmax(x · P) of one row, in plain loops.
std::vector<double> literal_features(const double* x, const std::vector<double>& P, int64_t d) {
  std::vector<double> z(d, 0.0);
  for (int64_t j = 0; j < d; ++j)
    for (int64_t k = 0; k < d; ++k) z[j] += x[k] * P[k * d + j];
  double max = z[0];
  for (const double value : z) max = std::max(max, value);
  double sum = 0.0;
  for (double& value : z) sum += value = std::exp(value - max);
  for (double& value : z) value /= sum;
  return z;
}

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
