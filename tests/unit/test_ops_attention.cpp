// The tiled causal attention against a naive double implementation that materialises the full
// T x T probability matrix.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu/attention.h"
#include "tests/unit/gradcheck.h"

namespace dj {
namespace {

using test::cast_vector;
using test::random_vector;
using test::relative_difference;

struct Shape {
  int64_t BH, T_len, d;
};

struct Inputs {
  std::vector<double> q, k, v, dout;
  double scale;
};

Inputs make_inputs(const Shape& s, uint64_t seed) {
  const int64_t n = s.BH * s.T_len * s.d;
  // Scores of a few units: peaked enough that the online max really moves between tiles.
  return {random_vector(n, seed, -2, 2), random_vector(n, seed + 1, -2, 2),
          random_vector(n, seed + 2), random_vector(n, seed + 3),
          1.0 / std::sqrt(static_cast<double>(s.d))};
}

struct Result {
  std::vector<double> o, lse, dq, dk, dv;
};

// Row i of head bh of the softmax probabilities, over keys 0..i.
std::vector<double> naive_probabilities(const Inputs& in, const Shape& s, int64_t bh, int64_t i,
                                        double* lse) {
  const double* q = in.q.data() + (bh * s.T_len + i) * s.d;
  std::vector<double> p(static_cast<size_t>(i + 1));
  for (int64_t j = 0; j <= i; ++j) {
    const double* k = in.k.data() + (bh * s.T_len + j) * s.d;
    double dot = 0.0;
    for (int64_t e = 0; e < s.d; ++e) dot += q[e] * k[e];
    p[j] = in.scale * dot;
  }
  const double max = *std::max_element(p.begin(), p.end());
  double sum = 0.0;
  for (double& x : p) sum += (x = std::exp(x - max));
  for (double& x : p) x /= sum;
  if (lse != nullptr) *lse = max + std::log(sum);
  return p;
}

// o = P V; with dP = dO V^T and dS = P o (dP - rowsum(P o dP)):
// dV = P^T dO, dQ = scale dS K, dK = scale dS^T Q.
Result naive_attention(const Inputs& in, const Shape& s) {
  const int64_t n = s.BH * s.T_len * s.d;
  Result r{std::vector<double>(n), std::vector<double>(s.BH * s.T_len), std::vector<double>(n),
           std::vector<double>(n), std::vector<double>(n)};
  for (int64_t bh = 0; bh < s.BH; ++bh) {
    auto at = [&](int64_t t) { return (bh * s.T_len + t) * s.d; };
    for (int64_t i = 0; i < s.T_len; ++i) {
      const auto p = naive_probabilities(in, s, bh, i, &r.lse[bh * s.T_len + i]);
      std::vector<double> dp(p.size());
      double rowsum = 0.0;
      for (int64_t j = 0; j <= i; ++j) {
        for (int64_t e = 0; e < s.d; ++e) {
          r.o[at(i) + e] += p[j] * in.v[at(j) + e];
          r.dv[at(j) + e] += p[j] * in.dout[at(i) + e];
          dp[j] += in.dout[at(i) + e] * in.v[at(j) + e];
        }
        rowsum += p[j] * dp[j];
      }
      for (int64_t j = 0; j <= i; ++j) {
        const double ds = p[j] * (dp[j] - rowsum);
        for (int64_t e = 0; e < s.d; ++e) {
          r.dq[at(i) + e] += in.scale * ds * in.k[at(j) + e];
          r.dk[at(j) + e] += in.scale * ds * in.q[at(i) + e];
        }
      }
    }
  }
  return r;
}

template <typename T>
Result tiled_attention(const Inputs& in, const Shape& s) {
  const int64_t n = s.BH * s.T_len * s.d;
  const auto q = cast_vector<T>(in.q), k = cast_vector<T>(in.k), v = cast_vector<T>(in.v),
             dout = cast_vector<T>(in.dout);
  std::vector<T> o(n), lse(s.BH * s.T_len), dq(n), dk(n), dv(n);
  const T scale = static_cast<T>(in.scale);
  cpu::causal_attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), s.BH, s.T_len,
                                s.d, scale);
  cpu::causal_attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                 v.data(), o.data(), lse.data(), s.BH, s.T_len, s.d, scale);
  return {cast_vector<double>(o), cast_vector<double>(lse), cast_vector<double>(dq),
          cast_vector<double>(dk), cast_vector<double>(dv)};
}

void expect_close(const Result& got, const Result& want, double tolerance, const Shape& s) {
  const auto where = ::testing::Message() << "BH " << s.BH << ", T " << s.T_len << ", d " << s.d;
  EXPECT_LE(relative_difference(got.o, want.o), tolerance) << "o, " << where;
  EXPECT_LE(relative_difference(got.lse, want.lse), tolerance) << "lse, " << where;
  if (s.T_len == 1) {
    // One key: the probabilities are constant 1, so dq and dk vanish up to rounding.
    for (size_t i = 0; i < got.dq.size(); ++i) {
      EXPECT_NEAR(got.dq[i], 0.0, tolerance) << "dq, " << where;
      EXPECT_NEAR(got.dk[i], 0.0, tolerance) << "dk, " << where;
    }
  } else {
    EXPECT_LE(relative_difference(got.dq, want.dq), tolerance) << "dq, " << where;
    EXPECT_LE(relative_difference(got.dk, want.dk), tolerance) << "dk, " << where;
  }
  EXPECT_LE(relative_difference(got.dv, want.dv), tolerance) << "dv, " << where;
}

// T = 1, inside one tile, exactly one tile, one past it, and ragged multi-tile lengths.
TEST(OpsAttention, MatchesNaiveForwardAndBackward) {
  std::vector<Shape> shapes;
  for (const int64_t T_len : {1, 7, 64, 65, 130, 200})
    for (const int64_t d : {5, 16, 64})
      for (const int64_t BH : {1, 3}) shapes.push_back({BH, T_len, d});
  // Wide heads narrow the key tiles (32 keys at d = 128, 13 at d = 300), so key blocks no longer
  // line up with query blocks.
  shapes.push_back({2, 130, 128});
  shapes.push_back({1, 100, 300});
  for (const Shape& s : shapes) {
    const Inputs in = make_inputs(s, static_cast<uint64_t>(s.T_len * 1000 + s.d * 10 + s.BH));
    const Result want = naive_attention(in, s);
    expect_close(tiled_attention<double>(in, s), want, 1e-12, s);
    expect_close(tiled_attention<float>(in, s), want, 1e-5, s);
  }
}

// Scores hundreds apart: most probabilities underflow to exactly 0 and the running maximum jumps
// between tiles.
TEST(OpsAttention, PeakedScoresMatchNaive) {
  const Shape s{2, 130, 16};
  Inputs in = make_inputs(s, 5);
  in.scale = 40.0;
  const Result want = naive_attention(in, s);
  expect_close(tiled_attention<double>(in, s), want, 1e-12, s);
  // Scores of ~500 carry float rounding of ~500 * 6e-8 in the exponent: ~3e-5 relative.
  expect_close(tiled_attention<float>(in, s), want, 1e-4, s);
}

// Whole heads per thread and the split key-block / query-block sweeps must agree to the bit,
// as must any two thread counts.
TEST(OpsAttention, BitIdenticalAcrossThreadCounts) {
  for (const Shape s : {Shape{3, 200, 16}, Shape{3, 150, 100}}) {
    const Inputs in = make_inputs(s, 7);
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const Result one = tiled_attention<float>(in, s);
    omp_set_num_threads(4);  // more threads than heads: the split backward
    const Result four = tiled_attention<float>(in, s);
    omp_set_num_threads(saved);
    EXPECT_EQ(one.o, four.o) << "d " << s.d;
    EXPECT_EQ(one.lse, four.lse) << "d " << s.d;
    EXPECT_EQ(one.dq, four.dq) << "d " << s.d;
    EXPECT_EQ(one.dk, four.dk) << "d " << s.d;
    EXPECT_EQ(one.dv, four.dv) << "d " << s.d;
  }
}

// A long sequence in float, checked on sampled rows against the double formula.
TEST(OpsAttention, LongSequenceForwardSampledRows) {
  const Shape s{1, 4096, 64};
  const Inputs in = make_inputs(s, 99);
  const int64_t n = s.T_len * s.d;
  const auto q = cast_vector<float>(in.q), k = cast_vector<float>(in.k),
             v = cast_vector<float>(in.v);
  std::vector<float> o(n), lse(s.T_len);
  cpu::causal_attention_forward(o.data(), lse.data(), q.data(), k.data(), v.data(), s.BH, s.T_len,
                                s.d, static_cast<float>(in.scale));
  for (const int64_t i : {0, 1, 63, 64, 1000, 2047, 2048, 4030, 4095}) {
    double want_lse = 0.0;
    const auto p = naive_probabilities(in, s, 0, i, &want_lse);
    std::vector<double> want(s.d, 0.0);
    for (int64_t j = 0; j <= i; ++j)
      for (int64_t e = 0; e < s.d; ++e) want[e] += p[j] * in.v[j * s.d + e];
    const std::vector<float> got(o.begin() + i * s.d, o.begin() + (i + 1) * s.d);
    EXPECT_LE(relative_difference(got, want), 1e-5) << "row " << i;
    EXPECT_NEAR(lse[i], want_lse, 1e-5 * std::max(1.0, std::abs(want_lse))) << "row " << i;
  }
}

}  // namespace
}  // namespace dj
