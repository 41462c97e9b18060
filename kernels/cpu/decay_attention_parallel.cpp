// The parallel form of the decayed attention (docs/method.md, section 4): the reference the other
// forms are checked against, quadratic in n. See decay_attention_rows.h.
#include "kernels/cpu/decay_attention_rows.h"

namespace dj::cpu::decay {

namespace {

// Tile edge of the parallel form.
constexpr int64_t kTile = 64;

// Parallel form (section 4): A = (FQ FKᵀ) ⊙ M with M_ij = γ^(i−j) for j <= i, O = A V. A is
// never held whole: it is walked in kTile x kTile tiles at or below the diagonal, which skips
// the masked upper half and keeps memory at one tile per thread; tiles so far below the
// diagonal that γ^(i−j) underflows everywhere are skipped too. `powers` holds γ^0 .. γ^(n−1).

template <typename T>
struct ParallelScratch {
  std::vector<T> scores = std::vector<T>(kTile * kTile);
  std::vector<T> grad_scores = std::vector<T>(kTile * kTile);
};

// True when every decay factor of the tile of query rows [q0, ...) and key rows [k0, k0 + nk)
// is 0, i.e. the largest one, γ^(q0 − k0 − nk + 1) at its top-right corner, underflowed (see
// decay_powers). Such a tile contributes exact zeros to every output and gradient.
template <typename T>
bool tile_vanishes(int64_t q0, int64_t k0, int64_t nk, const T* powers) {
  const int64_t nearest = q0 - (k0 + nk - 1);
  return nearest > 0 && powers[nearest] == T(0);
}

template <typename T>
void parallel_forward_row(const ForwardRow<T>& r, const T* powers, ParallelScratch<T>& s) {
  const int64_t n = r.n, m = r.m, dv = r.dv;
  std::fill(r.o, r.o + n * dv, T(0));
  for (int64_t q0 = 0; q0 < n; q0 += kTile) {
    const int64_t nq = std::min(kTile, n - q0);
    for (int64_t k0 = 0; k0 <= q0; k0 += kTile) {
      const int64_t nk = std::min(kTile, n - k0);
      if (tile_vanishes(q0, k0, nk, powers)) continue;
      T* A = s.scores.data();
      serial_gemm<T>(false, true, nq, nk, m, T(1), r.fq + q0 * m, r.fk + k0 * m, T(0), A);
      apply_decay_mask<T>(A, nullptr, nq, nk, q0 - k0, powers);
      serial_gemm<T>(false, false, nq, dv, nk, T(1), A, r.v + k0 * dv, T(1), r.o + q0 * dv);
    }
  }
}

// dA = (dO Vᵀ) ⊙ M, dFQ = dA FK, dFK = dAᵀ FQ, dV = Aᵀ dO, tile by tile; returns dlog γ, which is
// Σ_{j<=i} (i−j) A_ij (dO Vᵀ)_ij (the only powers used are the γ^(i−j) of M).
template <typename T>
double parallel_backward_row(const BackwardRow<T>& r, const T* powers, ParallelScratch<T>& s) {
  const int64_t n = r.n, m = r.m, dv = r.dv_size;
  std::fill(r.dfq, r.dfq + n * m, T(0));
  std::fill(r.dfk, r.dfk + n * m, T(0));
  std::fill(r.dv, r.dv + n * dv, T(0));
  double dlog_gamma = 0.0;
  for (int64_t q0 = 0; q0 < n; q0 += kTile) {
    const int64_t nq = std::min(kTile, n - q0);
    for (int64_t k0 = 0; k0 <= q0; k0 += kTile) {
      const int64_t nk = std::min(kTile, n - k0);
      if (tile_vanishes(q0, k0, nk, powers)) continue;
      T* A = s.scores.data();
      T* dA = s.grad_scores.data();
      serial_gemm<T>(false, true, nq, nk, m, T(1), r.fq + q0 * m, r.fk + k0 * m, T(0), A);
      serial_gemm<T>(false, true, nq, nk, dv, T(1), r.dout + q0 * dv, r.v + k0 * dv, T(0), dA);
      dlog_gamma += apply_decay_mask(A, dA, nq, nk, q0 - k0, powers);
      serial_gemm<T>(false, false, nq, m, nk, T(1), dA, r.fk + k0 * m, T(1), r.dfq + q0 * m);
      serial_gemm<T>(true, false, nk, m, nq, T(1), dA, r.fq + q0 * m, T(1), r.dfk + k0 * m);
      serial_gemm<T>(true, false, nk, dv, nq, T(1), A, r.dout + q0 * dv, T(1), r.dv + k0 * dv);
    }
  }
  return dlog_gamma;
}


}  // namespace

template <typename T>
void parallel_forward(const ForwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded) {
  const int64_t count = std::max<int64_t>(all.n, 1);
  const std::vector<T> powers = decay_powers(log_gamma, H, count);
#pragma omp parallel if (threaded)
  {
    ParallelScratch<T> s;
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh) parallel_forward_row(all.row(bh), powers.data() + (bh % H) * count, s);
  }
}

template <typename T>
void parallel_backward(const BackwardRow<T>& all, const T* log_gamma, int64_t BH, int64_t H, bool threaded,
                       double* row_dlog) {
  const int64_t count = std::max<int64_t>(all.n, 1);
  const std::vector<T> powers = decay_powers(log_gamma, H, count);
#pragma omp parallel if (threaded)
  {
    ParallelScratch<T> s;
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < BH; ++bh)
      row_dlog[bh] = parallel_backward_row(all.row(bh), powers.data() + (bh % H) * count, s);
  }
}

template void parallel_forward<float>(const ForwardRow<float>&, const float*, int64_t, int64_t, bool);
template void parallel_backward<float>(const BackwardRow<float>&, const float*, int64_t, int64_t, bool, double*);
template void parallel_forward<double>(const ForwardRow<double>&, const double*, int64_t, int64_t, bool);
template void parallel_backward<double>(const BackwardRow<double>&, const double*, int64_t, int64_t, bool, double*);

}  // namespace dj::cpu::decay
