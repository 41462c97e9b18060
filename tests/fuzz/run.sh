#!/usr/bin/env bash
# Runs one fuzz target on a copy of its committed corpus for SECONDS (every seed first, then
# mutations), with the options the project's fuzzing uses; fails on any crash, leak, timeout or
# sanitizer report. New inputs stay in the copy, not in the repository.
# Usage: run.sh FUZZER CORPUS_DIR SECONDS [libFuzzer options...]
set -euo pipefail
FUZZER="$(realpath "$1")" CORPUS="$2" SECONDS_TO_RUN="$3"
shift 3
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/corpus"
cp -r "$CORPUS/." "$WORK/corpus/"
cd "$WORK"
# 8 MiB inputs at most, 10 s and 2 GiB per input; leaks are findings too.
LSAN_OPTIONS="suppressions=$(dirname "$(realpath "$0")")/lsan_suppressions.txt" \
ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}" \
UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}" \
  "$FUZZER" -max_total_time="$SECONDS_TO_RUN" -max_len=8388608 -timeout=10 -rss_limit_mb=2048 \
  -print_final_stats=1 "$@" "$WORK/corpus"
