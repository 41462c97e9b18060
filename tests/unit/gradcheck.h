// Finite-difference gradient checking in fp64, shared by the op tests and the model tests.
//
// Usage: write the loss as a function of one flat parameter vector (unpack it inside the
// function), compute the analytic gradient at x with the code under test, then
//   const GradCheckResult r = gradcheck(loss, x, analytic);
//   EXPECT_LE(r.max_error, 1e-6) << r;
// For ops, a good loss is a random projection L = sum(R o f(x)): its gradient is the backward
// of the op applied to dout = R, which exercises every output element with a distinct weight.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <limits>
#include <ostream>
#include <random>
#include <vector>

namespace dj::test {

struct GradCheckOptions {
  // Central-difference step. Truncation error is O(eps^2 f'''), rounding error O(ulp(f) / eps):
  // 1e-6 balances the two for O(1) losses in double (~1e-10 absolute).
  double eps = 1e-6;
  // Errors are relative to max(|analytic|, |numeric|, floor), floor = floor_fraction times the
  // largest |numeric| component. The difference quotient carries an absolute rounding error of
  // about ulp(f) / eps whatever the component, so components far below the gradient's scale
  // are judged against that scale instead of against their own size.
  double floor_fraction = 1e-2;
  // Components to check; empty means all. Model-level checks with expensive losses pass a sample.
  std::vector<size_t> indices;
};

struct GradCheckResult {
  double max_error = 0.0;  // largest relative error over the checked components
  size_t worst_index = 0;  // where it occurred
  double analytic = 0.0;   // the two gradients at worst_index
  double numeric = 0.0;
  size_t checked = 0;
};

inline std::ostream& operator<<(std::ostream& os, const GradCheckResult& r) {
  return os << "gradcheck: max relative error " << r.max_error << " at index " << r.worst_index
            << " (analytic " << r.analytic << ", numeric " << r.numeric << ", " << r.checked
            << " components checked)";
}

// Compares `analytic` with the central difference (f(x + eps e_i) - f(x - eps e_i)) / (2 eps).
// f may read x freely; x is perturbed in place and restored exactly after each component.
inline GradCheckResult gradcheck(const std::function<double(std::vector<double>&)>& f,
                                 std::vector<double>& x, const std::vector<double>& analytic,
                                 const GradCheckOptions& options = {}) {
  std::vector<size_t> indices = options.indices;
  if (indices.empty()) {
    indices.resize(x.size());
    for (size_t i = 0; i < x.size(); ++i) indices[i] = i;
  }
  std::vector<double> numeric(indices.size());
  for (size_t n = 0; n < indices.size(); ++n) {
    double& xi = x.at(indices[n]);
    const double saved = xi;
    xi = saved + options.eps;
    const double plus = f(x);
    xi = saved - options.eps;
    const double minus = f(x);
    xi = saved;
    numeric[n] = (plus - minus) / (2.0 * options.eps);
  }

  double scale = 0.0;
  for (const double g : numeric) scale = std::max(scale, std::abs(g));
  const double floor = std::max(options.floor_fraction * scale, 1e-300);
  GradCheckResult result;
  result.checked = indices.size();
  for (size_t n = 0; n < indices.size(); ++n) {
    const double a = analytic.at(indices[n]);
    double error = std::abs(a - numeric[n]) / std::max({std::abs(a), std::abs(numeric[n]), floor});
    if (std::isnan(error)) error = std::numeric_limits<double>::infinity();  // never passes
    if (n == 0 || error > result.max_error) {
      result.max_error = error;
      result.worst_index = indices[n];
      result.analytic = a;
      result.numeric = numeric[n];
    }
  }
  return result;
}

// Uniform values in [lo, hi), reproducible from the seed.
inline std::vector<double> random_vector(size_t n, uint64_t seed, double lo = -1.0,
                                         double hi = 1.0) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double& value : v) value = dist(gen);
  return v;
}

// Converts between precisions, e.g. to run a float kernel on the same inputs as a double one.
template <typename To, typename From>
std::vector<To> cast_vector(const std::vector<From>& v) {
  return std::vector<To>(v.begin(), v.end());
}

// max_i |a_i - b_i| / max_i |b_i|: the error of a against the reference b relative to b's scale.
template <typename A, typename B>
double relative_difference(const std::vector<A>& a, const std::vector<B>& b) {
  double diff = 0.0;
  double scale = 0.0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double ref = static_cast<double>(b[i]);
    const double d = std::abs(static_cast<double>(a.at(i)) - ref);
    diff = std::isnan(d) ? std::numeric_limits<double>::infinity() : std::max(diff, d);
    scale = std::max(scale, std::abs(ref));
  }
  return diff / std::max(scale, 1e-300);
}

// sum(a o b): the random projection that turns an op's output into a scalar loss.
template <typename A, typename B>
double dot(const std::vector<A>& a, const std::vector<B>& b) {
  double sum = 0.0;
  for (size_t i = 0; i < a.size(); ++i)
    sum += static_cast<double>(a[i]) * static_cast<double>(b.at(i));
  return sum;
}

// The inputs of a check packed into one flat vector, as gradcheck wants them.
struct Packed {
  std::vector<double> values;
  std::vector<size_t> offsets;  // start of each part, plus the end
};

inline Packed pack(const std::vector<std::vector<double>>& parts) {
  Packed p;
  for (const auto& part : parts) {
    p.offsets.push_back(p.values.size());
    p.values.insert(p.values.end(), part.begin(), part.end());
  }
  p.offsets.push_back(p.values.size());
  return p;
}

}  // namespace dj::test
