#!/usr/bin/env bash
# The sanitizer stage of the tests (CI runs it after launch/test.sh): builds the unit tests and the
# fuzz targets with clang under AddressSanitizer and UndefinedBehaviorSanitizer in build-fuzz/
# (launch/sanitize_build.sh, installing clang if missing), then runs the unit tests there and every
# fuzz target for 10 s from its committed corpus (tests/fuzz). Extra arguments go to ctest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/sanitize_build.sh"
dijiang_sanitize_build
# The command-line and fault-injection tests stay with the main build (an LD_PRELOAD library cannot
# precede the ASan runtime); this build has no MPI and no CUDA emulation.
export LSAN_OPTIONS="suppressions=$DIJIANG_ROOT/tests/fuzz/lsan_suppressions.txt${LSAN_OPTIONS:+:$LSAN_OPTIONS}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
OMP_NUM_THREADS=1 ctest --test-dir "$FUZZ_BUILD_DIR" --output-on-failure --parallel "$(nproc)" --timeout 900 \
  -E '^(cli|tools|faults)\.' "$@"
