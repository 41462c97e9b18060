#!/usr/bin/env bash
# Runs every test (GoogleTest cases and command-line tests, through ctest, in parallel) after
# installing what is missing and building. Extra arguments go to ctest (e.g. -R GPTNeoX). The
# sanitizer stage (unit tests under ASan and UBSan, the fuzz targets) is launch/sanitize_test.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
# One OpenMP thread per test: ctest already runs one test per core.
OMP_NUM_THREADS=1 ctest --test-dir "$BUILD_DIR" --output-on-failure --parallel "$(nproc)" --timeout 600 "$@"
