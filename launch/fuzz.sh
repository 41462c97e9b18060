#!/usr/bin/env bash
# Fuzzes one parser of the files users bring: builds the libFuzzer harnesses (tests/fuzz; clang,
# AddressSanitizer and UndefinedBehaviorSanitizer) in build-fuzz/ and runs TARGET for SECONDS,
# starting from its committed corpus plus what earlier runs found (kept in build-fuzz/corpus/).
# A crash, leak, timeout or sanitizer report stops the run with status 1 and leaves the input in
# build-fuzz/findings/TARGET/.
# Usage: launch/fuzz.sh TARGET SECONDS [libFuzzer options...]   (launch/fuzz.sh --list: the targets)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGETS=(safetensors torch_bin npy indexed_dataset native_checkpoint flat_checkpoint config_json experiment_yaml
         tokenizer_json)
if [ "${1:-}" = "--list" ]; then printf '%s\n' "${TARGETS[@]}"; exit 0; fi
if [ $# -lt 2 ] || ! [[ "$2" =~ ^[0-9]+$ ]]; then
  echo "usage: launch/fuzz.sh TARGET SECONDS [libFuzzer options...] (targets: ${TARGETS[*]})" >&2
  exit 2
fi
TARGET="$1" SECONDS_TO_RUN="$2"
shift 2
if ! printf '%s\n' "${TARGETS[@]}" | grep -qx -- "$TARGET"; then
  echo "launch/fuzz.sh: unknown target '$TARGET' (targets: ${TARGETS[*]})" >&2
  exit 2
fi
source "$ROOT/launch/sanitize_build.sh"
dijiang_sanitize_build "fuzz_$TARGET"

corpus="$FUZZ_BUILD_DIR/corpus/$TARGET" findings="$FUZZ_BUILD_DIR/findings/$TARGET"
mkdir -p "$corpus" "$findings"
cd "$findings"
LSAN_OPTIONS="suppressions=$ROOT/tests/fuzz/lsan_suppressions.txt" \
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
  "$FUZZ_BUILD_DIR/fuzz/fuzz_$TARGET" -max_total_time="$SECONDS_TO_RUN" -max_len=8388608 -timeout=10 \
  -rss_limit_mb=2048 -print_final_stats=1 "$@" "$corpus" "$ROOT/tests/fuzz/corpus/$TARGET"
