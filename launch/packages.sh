#!/usr/bin/env bash
# The Debian packages the build needs, and their idempotent installation (only those missing, with
# sudo when not root). Sourced by launch/setup.sh and launch/sanitize_build.sh.

# OpenBLAS is its OpenMP build (libopenblas-openmp-dev), linked explicitly, so that matrix products
# run on the program's own OpenMP threads (cmake/DijiangDependencies.cmake).
DIJIANG_PACKAGES=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev libhdf5-dev libyaml-cpp-dev libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev
  libzip-dev libplplot-dev plplot-driver-cairo libutf8proc-dev libpcre2-dev libgtest-dev libgmock-dev libopenmpi-dev openmpi-bin
  libboost-context-dev libxxhash-dev python3
)
# The sanitizer and fuzzing build (launch/sanitize_build.sh): clang with its sanitizer and
# libFuzzer runtimes, and its OpenMP runtime.
DIJIANG_SANITIZER_PACKAGES=(clang libclang-rt-14-dev libomp-14-dev)

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

# dijiang_install_packages PACKAGE...: installs those of the packages that are missing.
dijiang_install_packages() {
  local missing=()
  for package in "$@"; do
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
