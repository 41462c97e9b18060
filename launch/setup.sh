#!/usr/bin/env bash
# Shared set-up for the launch scripts: installs the Debian packages the build needs (only those
# missing, so it is idempotent and fast on a prepared machine), then configures and builds.
# Source it: `source launch/setup.sh`. Honours BUILD_DIR (default build) and BUILD_TYPE (Release).
set -euo pipefail

DIJIANG_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$DIJIANG_ROOT/build}"
BUILD_TYPE="${BUILD_TYPE:-Release}"

# OpenBLAS is its OpenMP build (libopenblas-openmp-dev), linked explicitly, so that matrix products
# run on the program's own OpenMP threads (cmake/DijiangDependencies.cmake).
DIJIANG_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev libhdf5-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libzip-dev libplplot-dev plplot-driver-cairo libutf8proc-dev libpcre2-dev libgtest-dev libgmock-dev libopenmpi-dev openmpi-bin
  libboost-context-dev libxxhash-dev python3
)

# dijiang_quiet_step DESCRIPTION LOG COMMAND...: runs COMMAND with its output appended to LOG and
# prints one line; on failure it prints the whole log (on stderr) and returns the command's status.
dijiang_quiet_step() {
  local what="$1" log="$2" start=$SECONDS status=0
  shift 2
  printf 'setup: %s... ' "$what"
  "$@" >>"$log" 2>&1 || status=$?
  if [ "$status" -eq 0 ]; then
    echo "done ($((SECONDS - start)) s)"
    return 0
  fi
  echo "failed (exit status $status)"
  echo "setup: the log of $what ($log):" >&2
  cat "$log" >&2
  return "$status"
}

dijiang_install_packages() {
  local missing=()
  for package in "${DIJIANG_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if [ ${#missing[@]} -eq 0 ]; then return 0; fi
  echo "setup: missing Debian packages: ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then sudo=(sudo); fi
  local log
  log="$(mktemp "${TMPDIR:-/tmp}/dijiang-setup-XXXXXX.log")"
  dijiang_quiet_step "apt-get update" "$log" "${sudo[@]}" apt-get update
  dijiang_quiet_step "apt-get install (with their dependencies)" "$log" \
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
  rm -f "$log"
}

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

dijiang_install_packages
dijiang_build
dijiang_blas_coretype
DIJIANG="$BUILD_DIR/dijiang"
