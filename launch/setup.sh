#!/usr/bin/env bash
# Shared set-up for the launch scripts: installs the Debian packages the build needs (only those
# missing, so it is idempotent and fast on a prepared machine), then configures and builds.
# Source it: `source launch/setup.sh`. Honours BUILD_DIR (default build) and BUILD_TYPE (Release).
set -euo pipefail

DIJIANG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$DIJIANG_ROOT/build}"
BUILD_TYPE="${BUILD_TYPE:-Release}"

source "$DIJIANG_ROOT/launch/packages.sh"

dijiang_build() {
  # nvcc lives outside the default PATH on many machines; CMake then builds the CUDA backend too.
  if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
  local werror=OFF
  if [ "${CI:-}" = "true" ]; then werror=ON; fi
  cmake -S "$DIJIANG_ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
    -DDIJIANG_WERROR="$werror" ${DIJIANG_CMAKE_ARGS:-} >/dev/null
  cmake --build "$BUILD_DIR" --parallel "$(nproc)"
}

# OpenBLAS picks its kernels from the CPU model when it loads; on models newer than the packaged
# release it falls back to generic SSE kernels. Name the right family from the CPU's features then.
dijiang_blas_coretype() {
  if [ -n "${OPENBLAS_CORETYPE:-}" ]; then return 0; fi
  local core
  core=$("$BUILD_DIR/dijiang" --version 2>/dev/null | sed -n 's/^BLAS: .* \([A-Za-z0-9_]*\) kernels, .*/\1/p')
  if [ "$core" != "Prescott" ]; then return 0; fi
  if grep -qw avx512f /proc/cpuinfo; then export OPENBLAS_CORETYPE=SkylakeX
  elif grep -qw avx2 /proc/cpuinfo; then export OPENBLAS_CORETYPE=Haswell
  fi
}

dijiang_install_packages "${DIJIANG_PACKAGES[@]}"
dijiang_build
dijiang_blas_coretype
DIJIANG="$BUILD_DIR/dijiang"
