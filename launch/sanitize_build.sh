#!/usr/bin/env bash
# The sanitizer build shared by launch/fuzz.sh and launch/test.sh: clang with AddressSanitizer,
# UndefinedBehaviorSanitizer and libFuzzer's coverage (DIJIANG_FUZZ), CPU only, in build-fuzz/
# (FUZZ_BUILD_DIR). Source it, then call dijiang_sanitize_build [TARGET...]; without targets it
# builds what the sanitizer stage of launch/test.sh runs: the unit tests and the fuzz targets.
set -euo pipefail
DIJIANG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_BUILD_DIR="${FUZZ_BUILD_DIR:-$DIJIANG_ROOT/build-fuzz}"
source "$DIJIANG_ROOT/launch/packages.sh"

dijiang_sanitize_build() {
  dijiang_install_packages "${DIJIANG_PACKAGES[@]}" "${DIJIANG_SANITIZER_PACKAGES[@]}"
  local werror=OFF
  if [ "${CI:-}" = "true" ]; then werror=ON; fi
  # -O1 and line tables only: the sanitizers' recommended optimisation, and the compile time of
  # this second build kept down (stack traces still name files and lines).
  CC=clang CXX=clang++ cmake -S "$DIJIANG_ROOT" -B "$FUZZ_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    -DDIJIANG_FUZZ=ON -DDIJIANG_CUDA=OFF -DDIJIANG_CUDA_EMULATION=OFF -DDIJIANG_MPI=OFF \
    -DDIJIANG_WERROR="$werror" >/dev/null
  local targets=("$@")
  if [ ${#targets[@]} -eq 0 ]; then
    targets=(dijiang_tests dijiang_gemm_no_blas_tests)
    for target in $(bash "$DIJIANG_ROOT/launch/fuzz.sh" --list); do targets+=("fuzz_$target"); done
  fi
  cmake --build "$FUZZ_BUILD_DIR" --parallel "$(nproc)" --target "${targets[@]}"
}
