// What the tests of the DiJiang CPU kernels share (test_dijiang_ops.cpp, test_dijiang_values.cpp):
// decay-attention problems and their inputs, each form run on them, the reference log γ schedule,
// and the feature map written out literally.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "kernels/cpu/dijiang.h"
#include "tests/unit/gradcheck.h"

namespace dj::test {

using cpu::DecayForm;

// ‖a − b‖ / ‖b‖.
inline double l2_relative(const std::vector<double>& a, const std::vector<double>& b) {
  double diff = 0.0, norm = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    diff += (a.at(i) - b[i]) * (a.at(i) - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-300);
}

inline bool all_finite(const std::vector<double>& v) {
  for (const double x : v)
    if (!std::isfinite(x)) return false;
  return true;
}

// log γ_h of the reference schedule (section 2 step 5): γ_h = 1 − exp(ℓ_h),
// ℓ = linspace(log(1/32), log(1/512), H), ℓ = log(1/32) for H = 1.
inline std::vector<double> schedule_log_gamma(int64_t H) {
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
inline std::vector<double> random_log_gamma(int64_t H, uint64_t seed) {
  std::vector<double> log_gamma = random_vector(static_cast<size_t>(H), seed, 0.5, 0.999);
  for (double& g : log_gamma) g = std::log(g);
  return log_gamma;
}

inline std::string form_name(DecayForm form, int64_t chunk) {
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
inline Inputs make_inputs(const Problem& p, uint64_t seed, bool schedule_gamma) {
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

inline void expect_outputs_close(const Outputs& got, const Outputs& want, double tolerance,
                          const std::string& context) {
  EXPECT_LE(l2_relative(got.o, want.o), tolerance) << "o, " << context;
  EXPECT_LE(l2_relative(got.dfq, want.dfq), tolerance) << "dfq, " << context;
  EXPECT_LE(l2_relative(got.dfk, want.dfk), tolerance) << "dfk, " << context;
  EXPECT_LE(l2_relative(got.dv, want.dv), tolerance) << "dv, " << context;
  EXPECT_LE(l2_relative(got.dlog_gamma, want.dlog_gamma), tolerance) << "dlog_gamma, " << context;
}

// φ(x) = softmax(x · P) of one row, in plain loops.
inline std::vector<double> literal_features(const double* x, const std::vector<double>& P, int64_t d) {
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

}  // namespace dj::test
