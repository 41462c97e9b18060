// Parameters a trained GPT-NeoX model could hold, for the device checks of the whole model and of
// the training state: matrices ~ N(0, 0.05²), the norms' weights near 1, the DiJiang projection
// from the DCT of Gaussian scales, decays in the reference range.
#pragma once
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/dijiang.h"
#include "trainer/model/config.h"
#include "trainer/model/parameters.h"

namespace dj::gpucheck {

inline std::vector<double> model_parameters(const ParameterLayout& layout, const ModelConfig& config,
                                            std::mt19937_64& rng) {
  std::vector<double> params(static_cast<size_t>(layout.total()));
  std::normal_distribution<double> normal(0.0, 1.0);
  for (const auto& view : layout.views()) {
    double* out = params.data() + view.offset;
    const int64_t n = view.numel();
    if (view.name.ends_with("proj_matrix")) {
      const int64_t d = config.head_dim();
      std::vector<double> t(static_cast<size_t>(d));
      for (auto& x : t) x = normal(rng);
      cpu::dct_projection(out, t.data(), d);
    } else if (view.name.ends_with("log_gamma")) {
      for (int64_t h = 0; h < n; ++h)
        out[h] = std::log(1.0 - std::exp2(-(5.0 + 4.0 * static_cast<double>(h) /
                                                   static_cast<double>(std::max<int64_t>(1, n - 1)))));
    } else if (view.name.ends_with("feature_weights") || (view.shape.size() == 1 && view.name.ends_with(".weight"))) {
      for (int64_t i = 0; i < n; ++i) out[i] = 1.0 + 0.1 * normal(rng);
    } else {
      for (int64_t i = 0; i < n; ++i) out[i] = 0.05 * normal(rng);
    }
  }
  return params;
}

}  // namespace dj::gpucheck
