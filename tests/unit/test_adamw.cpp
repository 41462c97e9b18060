// AdamW, global-norm clipping and the learning-rate schedule (trainer/optim/adamw.h) against torch
// references (tests/fixtures/make_optim_fixtures.py) and against their documented contracts.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "fixture_paths.h"
#include "trainer/checkpoint/safetensors.h"
#include "trainer/optim/adamw.h"

namespace dj {
namespace {

using test::fixture;

const TensorMap& golden() {
  static const TensorMap tensors = read_safetensors(fixture("optim/adamw.safetensors"));
  return tensors;
}

std::vector<float> floats(const std::string& name) {
  const Tensor& t = golden().at(name);
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

void append(std::vector<float>& out, const std::vector<float>& values) {
  out.insert(out.end(), values.begin(), values.end());
}

// Distance in representable floats: the bit patterns mapped onto a monotonic integer line.
int64_t ulp_distance(float a, float b) {
  const auto ordered = [](float x) {
    const int32_t bits = std::bit_cast<int32_t>(x);
    return bits < 0 ? -static_cast<int64_t>(bits & 0x7fffffff) : static_cast<int64_t>(bits);
  };
  return std::llabs(ordered(a) - ordered(b));
}

// Largest ulp distance over two ranges, failing on any value further than 2 ulp that is not also
// within 1e-7 relative of the reference.
int64_t expect_close(const std::vector<float>& actual, const std::vector<float>& expected,
                     const std::string& what) {
  EXPECT_EQ(actual.size(), expected.size()) << what;
  int64_t worst = 0;
  for (size_t i = 0; i < expected.size() && i < actual.size(); ++i) {
    const int64_t ulps = ulp_distance(actual[i], expected[i]);
    worst = std::max(worst, ulps);
    const double diff = std::abs(static_cast<double>(actual[i]) - static_cast<double>(expected[i]));
    EXPECT_TRUE(ulps <= 2 || diff <= 1e-7 * std::abs(static_cast<double>(expected[i])))
        << what << "[" << i << "]: " << actual[i] << " vs torch " << expected[i] << " (" << ulps
        << " ulp)";
  }
  return worst;
}

template <typename F>
auto with_threads(int threads, F&& body) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(threads);
  auto result = body();
  omp_set_num_threads(saved);
  return result;
}

// The fixture's parameter tensors in flat-buffer order, with their roles.
struct FixtureParam {
  const char* name;
  bool decay;
  bool trained;
};
constexpr FixtureParam kParams[] = {
    {"weight", true, true}, {"bias", false, true}, {"frozen", false, false}, {"wide", true, true}};
constexpr int kSteps = 5;

// What a frozen value's moments hold before (and, untouched, after) every step.
constexpr float kFrozenM = 0.25f, kFrozenV = 0.5f;

TEST(AdamW, MatchesTorchStepByStep) {
  std::vector<float> params, m, v;
  std::vector<uint8_t> decay, update;
  for (const FixtureParam& p : kParams) {
    const std::vector<float> initial = floats(std::string("param.") + p.name + ".0");
    append(params, initial);
    m.insert(m.end(), initial.size(), p.trained ? 0.0f : kFrozenM);
    v.insert(v.end(), initial.size(), p.trained ? 0.0f : kFrozenV);
    decay.insert(decay.end(), initial.size(), p.decay ? 1 : 0);
    update.insert(update.end(), initial.size(), p.trained ? 1 : 0);
  }
  const std::vector<double> lrs = golden().at("lr").to_f64_vector();
  ASSERT_EQ(lrs.size(), static_cast<size_t>(kSteps));

  int64_t worst_p = 0, worst_m = 0, worst_v = 0;
  for (int step = 1; step <= kSteps; ++step) {
    // The fixture took its rates from the schedule (lr 3e-4, min 3e-5, W 2, E 5) at step - 1.
    EXPECT_EQ(lrs[step - 1], learning_rate(step - 1, 3e-4, 3e-5, 2, 5)) << "step " << step;
    std::vector<float> grads;
    for (const FixtureParam& p : kParams)
      append(grads, floats("grad." + std::string(p.name) + "." + std::to_string(step)));
    adamw_step(params.data(), m.data(), v.data(), grads.data(), decay.data(), update.data(),
               static_cast<int64_t>(params.size()), step, lrs[step - 1], AdamWConfig{});

    size_t offset = 0;
    for (const FixtureParam& p : kParams) {
      const std::string suffix = std::string(p.name) + "." + std::to_string(step);
      const std::vector<float> expected = floats("param." + suffix);
      const auto slice = [&](const std::vector<float>& all) {
        const auto begin = all.begin() + static_cast<std::ptrdiff_t>(offset);
        return std::vector<float>(begin, begin + static_cast<std::ptrdiff_t>(expected.size()));
      };
      worst_p = std::max(worst_p, expect_close(slice(params), expected, "param." + suffix));
      if (p.trained) {
        const std::string m_name = "exp_avg." + suffix, v_name = "exp_avg_sq." + suffix;
        worst_m = std::max(worst_m, expect_close(slice(m), floats(m_name), m_name));
        worst_v = std::max(worst_v, expect_close(slice(v), floats(v_name), v_name));
      }
      offset += expected.size();
    }
  }
  std::cout << "AdamW vs torch over " << kSteps << " steps: max ulp params " << worst_p
            << ", exp_avg " << worst_m << ", exp_avg_sq " << worst_v << "\n";
  RecordProperty("max_ulp_params", static_cast<int>(worst_p));
  RecordProperty("max_ulp_exp_avg", static_cast<int>(worst_m));
  RecordProperty("max_ulp_exp_avg_sq", static_cast<int>(worst_v));
}

TEST(AdamW, FrozenValuesKeepParamsAndMoments) {
  const std::vector<float> initial = floats("param.frozen.0");
  const size_t n = initial.size();
  std::vector<float> params = initial, m(n, kFrozenM), v(n, kFrozenV);
  const std::vector<uint8_t> decay(n, 1), update(n, 0);
  for (int step = 1; step <= kSteps; ++step) {
    const std::vector<float> grads = floats("grad.frozen." + std::to_string(step));
    adamw_step(params.data(), m.data(), v.data(), grads.data(), decay.data(), update.data(),
               static_cast<int64_t>(n), step, 1e-3, AdamWConfig{});
  }
  EXPECT_EQ(params, initial);
  EXPECT_EQ(m, std::vector<float>(n, kFrozenM));
  EXPECT_EQ(v, std::vector<float>(n, kFrozenV));
  EXPECT_EQ(params, floats("param.frozen." + std::to_string(kSteps)));  // torch left it alone too
}

TEST(AdamW, DecayMaskAppliesDecoupledDecayOnlyWhereSet) {
  // With zero gradients and fresh moments the Adam update is exactly 0 (0 / (0 + eps)), leaving
  // only the decoupled decay p · (1 − lr·wd).
  const std::vector<float> initial = {1.5f, -2.0f, 0.75f, 3.0f};
  const std::vector<uint8_t> decay = {1, 0, 1, 0};
  std::vector<float> params = initial, m(4, 0.0f), v(4, 0.0f);
  const std::vector<float> grads(4, 0.0f);
  const double lr = 0.01;
  AdamWConfig config;
  config.weight_decay = 0.5;
  adamw_step(params.data(), m.data(), v.data(), grads.data(), decay.data(), nullptr, 4, 1, lr, config);
  const float factor = static_cast<float>(1.0 - lr * config.weight_decay);
  for (size_t i = 0; i < initial.size(); ++i)
    EXPECT_EQ(params[i], decay[i] ? initial[i] * factor : initial[i]) << i;
  EXPECT_EQ(m, std::vector<float>(4, 0.0f));
  EXPECT_EQ(v, std::vector<float>(4, 0.0f));
}

TEST(AdamW, UpdateMaskFreezesOnlyMarkedValuesAndNullTrainsAll) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t n = 64;
  std::vector<float> initial(n), grads(n);
  for (size_t i = 0; i < n; ++i) initial[i] = normal(rng), grads[i] = 0.01f * normal(rng);
  std::vector<uint8_t> decay(n), update(n);
  for (size_t i = 0; i < n; ++i) decay[i] = i % 2, update[i] = i % 3 != 0;

  std::vector<float> all = initial, all_m(n, 0.1f), all_v(n, 0.2f);
  adamw_step(all.data(), all_m.data(), all_v.data(), grads.data(), decay.data(), nullptr,
             static_cast<int64_t>(n), 3, 1e-3, AdamWConfig{});
  std::vector<float> masked = initial, masked_m(n, 0.1f), masked_v(n, 0.2f);
  adamw_step(masked.data(), masked_m.data(), masked_v.data(), grads.data(), decay.data(),
             update.data(), static_cast<int64_t>(n), 3, 1e-3, AdamWConfig{});
  for (size_t i = 0; i < n; ++i) {
    EXPECT_NE(all[i], initial[i]) << i;  // null mask: everything trains
    if (update[i]) {
      EXPECT_EQ(masked[i], all[i]) << i;
      EXPECT_EQ(masked_m[i], all_m[i]) << i;
      EXPECT_EQ(masked_v[i], all_v[i]) << i;
    } else {
      EXPECT_EQ(masked[i], initial[i]) << i;
      EXPECT_EQ(masked_m[i], 0.1f) << i;
      EXPECT_EQ(masked_v[i], 0.2f) << i;
    }
  }
}

TEST(AdamW, IdenticalForAnyThreadCount) {
  const int64_t n = 200'003;  // large enough to run in parallel
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> initial(static_cast<size_t>(n)), grads(static_cast<size_t>(n));
  std::vector<uint8_t> decay(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    initial[static_cast<size_t>(i)] = normal(rng);
    grads[static_cast<size_t>(i)] = 1e-3f * normal(rng);
    decay[static_cast<size_t>(i)] = i % 5 != 0;
  }
  const auto run = [&] {
    std::vector<float> p = initial, m(initial.size(), 0.0f), v(initial.size(), 0.0f);
    for (int step = 1; step <= 2; ++step)
      adamw_step(p.data(), m.data(), v.data(), grads.data(), decay.data(), nullptr, n, step, 1e-3,
                 AdamWConfig{});
    return p;
  };
  EXPECT_EQ(with_threads(1, run), with_threads(2, run));
}

std::vector<float> clip_grads(const char* kind) {
  std::vector<float> out;
  for (int i = 0; i < 3; ++i)
    append(out, floats(std::string("clip.") + kind + "." + std::to_string(i)));
  return out;
}

TEST(ClipGlobalNorm, MatchesTorchClipGradNorm) {
  std::vector<float> grads = clip_grads("grad");
  const int64_t n = static_cast<int64_t>(grads.size());
  const double norm = global_norm(grads.data(), n);
  const double torch_norm_f64 = golden().at("clip.norm_f64").to_f64_vector().at(0);
  const double torch_norm_f32 = golden().at("clip.norm").to_f64_vector().at(0);
  EXPECT_NEAR(norm, torch_norm_f64, 1e-12 * torch_norm_f64);
  EXPECT_NEAR(norm, torch_norm_f32, 1e-6 * torch_norm_f32);  // torch sums in float32

  const double max_norm = golden().at("clip.max_norm").to_f64_vector().at(0);
  const double factor = clip_by_global_norm(grads.data(), n, norm, max_norm);
  EXPECT_EQ(factor, static_cast<double>(static_cast<float>(max_norm / (norm + 1e-6))));
  const int64_t worst = expect_close(grads, clip_grads("clipped"), "clipped");
  std::cout << "clip_grad_norm_ vs torch: max ulp " << worst << "\n";
}

TEST(ClipGlobalNorm, LeavesGradsAloneWithinTheLimit) {
  std::vector<float> grads = clip_grads("grad");
  const std::vector<float> before = grads;
  const int64_t n = static_cast<int64_t>(grads.size());
  const double norm = global_norm(grads.data(), n);
  EXPECT_EQ(clip_by_global_norm(grads.data(), n, norm, 2.0 * norm), 1.0);
  EXPECT_EQ(grads, before);
  // torch's 1e-6 guard: a norm exactly at the limit still scales, by max / (max + 1e-6).
  EXPECT_EQ(clip_by_global_norm(grads.data(), n, 1.0, 1.0),
            static_cast<double>(static_cast<float>(1.0 / 1.000001)));
  EXPECT_LT(std::abs(grads[0]), std::abs(before[0]));
}

TEST(ClipGlobalNorm, GlobalNormIsDeterministicAcrossThreadCounts) {
  const int64_t n = 1'000'003;  // many reduction blocks, the last one partial
  std::mt19937 rng(3);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> grads(static_cast<size_t>(n));
  for (float& g : grads) g = normal(rng);
  const auto norm_of = [&] { return global_norm(grads.data(), n); };
  const double one = with_threads(1, norm_of), two = with_threads(2, norm_of),
               three = with_threads(3, norm_of);
  EXPECT_EQ(std::bit_cast<uint64_t>(one), std::bit_cast<uint64_t>(two));
  EXPECT_EQ(std::bit_cast<uint64_t>(one), std::bit_cast<uint64_t>(three));
  long double reference = 0.0L;
  for (const float g : grads) reference += static_cast<long double>(g) * static_cast<long double>(g);
  EXPECT_NEAR(one, static_cast<double>(std::sqrt(reference)), 1e-12 * one);
  EXPECT_EQ(global_norm(grads.data(), 0), 0.0);
}

TEST(Schedule, MatchesPythonFormula) {
  const std::vector<double> steps = golden().at("schedule.steps").to_f64_vector();
  const std::vector<double> expected = golden().at("schedule.lr").to_f64_vector();
  ASSERT_EQ(steps.size(), expected.size());
  for (size_t i = 0; i < steps.size(); ++i) {
    const double lr = learning_rate(static_cast<int64_t>(steps[i]), 1e-3, 1e-4, 10, 100);
    EXPECT_NEAR(lr, expected[i], 1e-12 * expected[i]) << "step " << steps[i];
  }
}

TEST(Schedule, WarmupCosineAndFloor) {
  EXPECT_DOUBLE_EQ(learning_rate(0, 1e-3, 1e-4, 10, 100), 1e-4);  // max(1, 0) / W
  EXPECT_DOUBLE_EQ(learning_rate(1, 1e-3, 1e-4, 10, 100), 1e-4);
  EXPECT_DOUBLE_EQ(learning_rate(10, 1e-3, 1e-4, 10, 100), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(55, 1e-3, 1e-4, 10, 100), 5.5e-4);  // cosine midpoint
  EXPECT_DOUBLE_EQ(learning_rate(100, 1e-3, 1e-4, 10, 100), 1e-4);
  EXPECT_EQ(learning_rate(101, 1e-3, 1e-4, 10, 100), 1e-4);  // stays at min_lr after E
  EXPECT_EQ(learning_rate(1'000'000, 1e-3, 1e-4, 10, 100), 1e-4);
}

TEST(Schedule, NoWarmupStartsOnTheCosine) {
  EXPECT_EQ(learning_rate(0, 1e-3, 1e-4, 0, 100), 1e-3);
  EXPECT_DOUBLE_EQ(learning_rate(50, 1e-3, 1e-4, 0, 100), 5.5e-4);
  EXPECT_EQ(learning_rate(100, 1e-3, 1e-4, 0, 100), 1e-4);
  EXPECT_EQ(learning_rate(150, 1e-3, 1e-4, 0, 100), 1e-4);
  // No cosine span (E <= W): warmup, then min_lr.
  EXPECT_DOUBLE_EQ(learning_rate(5, 1e-3, 1e-4, 10, 10), 5e-4);
  EXPECT_EQ(learning_rate(11, 1e-3, 1e-4, 10, 10), 1e-4);
}

}  // namespace
}  // namespace dj
