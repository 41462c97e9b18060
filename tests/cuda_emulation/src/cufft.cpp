// cuFFT of the CUDA emulation: batched 1-D complex-to-real plans (the case
// tests/gpu/check_dct_cufft.cu uses), executed as a stream operation by a direct O(n^2) DFT in
// double, rounded once to float. As cuFFT's C2R, the transform is unnormalised and reads the
// half spectrum X_0 .. X_{n/2} of a Hermitian sequence (the imaginary parts of X_0 and, for even
// n, X_{n/2} do not contribute).
#include <cufft.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "internal.h"

namespace {

struct Plan {
  int n = 0, batch = 0;
  int istride = 1, idist = 0, ostride = 1, odist = 0;
  cudaStream_t stream = nullptr;
};

std::mutex g_mutex;
std::map<cufftHandle, Plan> g_plans;
cufftHandle g_next = 1;

bool device_span(const void* p, size_t bytes) {
  dj::emu::Allocation a;
  return dj::emu::find_allocation(p, bytes, &a) && a.device >= 0;
}

}  // namespace

extern "C" {

cufftResult cufftPlanMany(cufftHandle* plan, int rank, int* n, int* inembed, int istride, int idist, int* onembed,
                          int ostride, int odist, cufftType type, int batch) {
  if (plan == nullptr || n == nullptr) return CUFFT_INVALID_VALUE;
  if (type != CUFFT_C2R) return CUFFT_NOT_SUPPORTED;  // the only transform modelled
  if (rank != 1) return CUFFT_NOT_SUPPORTED;
  if (n[0] < 1 || batch < 1) return CUFFT_INVALID_SIZE;
  Plan p;
  p.n = n[0];
  p.batch = batch;
  if (inembed == nullptr || onembed == nullptr) {  // the basic layout
    p.istride = 1;
    p.idist = n[0] / 2 + 1;
    p.ostride = 1;
    p.odist = n[0];
  } else {
    if (istride < 1 || ostride < 1 || idist < 1 || odist < 1) return CUFFT_INVALID_VALUE;
    p.istride = istride;
    p.idist = idist;
    p.ostride = ostride;
    p.odist = odist;
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  *plan = g_next++;
  g_plans[*plan] = p;
  return CUFFT_SUCCESS;
}

cufftResult cufftSetStream(cufftHandle plan, cudaStream_t stream) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_plans.find(plan);
  if (it == g_plans.end()) return CUFFT_INVALID_PLAN;
  it->second.stream = stream;
  return CUFFT_SUCCESS;
}

cufftResult cufftGetSize(cufftHandle plan, size_t* workSize) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (g_plans.count(plan) == 0) return CUFFT_INVALID_PLAN;
  if (workSize == nullptr) return CUFFT_INVALID_VALUE;
  *workSize = 0;
  return CUFFT_SUCCESS;
}

cufftResult cufftExecC2R(cufftHandle plan, cufftComplex* idata, cufftReal* odata) {
  Plan p;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_plans.find(plan);
    if (it == g_plans.end()) return CUFFT_INVALID_PLAN;
    p = it->second;
  }
  const int h = p.n / 2 + 1;
  const size_t in_count = static_cast<size_t>(p.batch - 1) * static_cast<size_t>(p.idist) +
                          static_cast<size_t>(h - 1) * static_cast<size_t>(p.istride) + 1;
  const size_t out_count = static_cast<size_t>(p.batch - 1) * static_cast<size_t>(p.odist) +
                           static_cast<size_t>(p.n - 1) * static_cast<size_t>(p.ostride) + 1;
  if (!device_span(idata, in_count * sizeof(cufftComplex)) || !device_span(odata, out_count * sizeof(cufftReal)))
    return CUFFT_INVALID_VALUE;
  CUstream_st* stream = dj::emu::resolve_stream(p.stream);
  if (stream == nullptr) return CUFFT_INVALID_VALUE;
  auto op = std::make_unique<dj::emu::Op>();
  op->what = "cufftExecC2R";
  op->run = [p, h, idata, odata] {
    const int n = p.n;
    const double pi = 3.14159265358979323846;
    std::vector<double> c(static_cast<size_t>(n)), s(static_cast<size_t>(n));
    for (int j = 0; j < n; ++j) {
      c[static_cast<size_t>(j)] = std::cos(2.0 * pi * j / n);
      s[static_cast<size_t>(j)] = (j == 0 || 2 * j == n) ? 0.0 : std::sin(2.0 * pi * j / n);
    }
    std::vector<float> out(static_cast<size_t>(n));
    for (int b = 0; b < p.batch; ++b) {
      const cufftComplex* x = idata + static_cast<size_t>(b) * static_cast<size_t>(p.idist);
      for (int t = 0; t < n; ++t) {
        double v = x[0].x;
        for (int k = 1; k < h; ++k) {
          const cufftComplex xk = x[static_cast<size_t>(k) * static_cast<size_t>(p.istride)];
          const size_t j = static_cast<size_t>((static_cast<long long>(k) * t) % n);
          const double term = static_cast<double>(xk.x) * c[j] - static_cast<double>(xk.y) * s[j];
          v += (2 * k == n) ? term : 2.0 * term;  // X_{n-k} = conj X_k doubles the real part
        }
        out[static_cast<size_t>(t)] = static_cast<float>(v);
      }
      float* y = odata + static_cast<size_t>(b) * static_cast<size_t>(p.odist);
      for (int t = 0; t < n; ++t) y[static_cast<size_t>(t) * static_cast<size_t>(p.ostride)] = out[static_cast<size_t>(t)];
    }
    return true;
  };
  dj::emu::device(stream->device)->enqueue(stream, std::move(op));
  return CUFFT_SUCCESS;
}

cufftResult cufftDestroy(cufftHandle plan) {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_plans.erase(plan) != 0 ? CUFFT_SUCCESS : CUFFT_INVALID_PLAN;
}

}  // extern "C"
