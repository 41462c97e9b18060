#!/usr/bin/env bash
# A rank that dies mid-run ends the job with a message naming it, and a rank that stops answering
# ends it through the collective timeout, every rank that waited for it saying so; neither hangs.
# The checks are on what the job reports, not on how fast it is: LIMIT_S only turns a job that
# does not end into a failure with its log (the job normally ends within seconds of the signal).
# Usage: rank_failure.sh DIJIANG MPIEXEC SOURCE_DIR
set -euo pipefail
DIJIANG="$1" MPIEXEC="$2" SOURCE_DIR="$3"
LIMIT_S=240
WORK="$(mktemp -d)"
trap 'pkill -KILL -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"

fail() { cat "$WORK/out.log"; echo "FAIL: $*"; exit 1; }

# rank_pid RANK: the pid of that rank of the job writing into $WORK/run.
rank_pid() {
  for pid in $(pgrep -f "checkpoint.dir=$WORK/run" || true); do
    grep -qz "^OMPI_COMM_WORLD_RANK=$1\$" "/proc/$pid/environ" 2>/dev/null && { echo "$pid"; return; }
  done
}

failure() {  # SIGNAL TIMEOUT_S EXPECTED-TEXT...
  local signal="$1" timeout="$2"; shift 2
  rm -rf "$WORK/run"
  "$MPIEXEC" --oversubscribe --allow-run-as-root -np 3 \
    "$DIJIANG" train configs/micro/tiny-dijiang.yaml \
    data.seq_len=32 schedule.steps=100000 checkpoint.every=100000 batch.micro_batch=1 batch.grad_accum=3 \
    distributed.timeout_s="$timeout" "checkpoint.dir=$WORK/run" >"$WORK/out.log" 2>&1 &
  local job=$!
  # Wait until training is under way (step lines in the metrics), then hit rank 1.
  until [ -s "$WORK/run/metrics.jsonl" ] && [ "$(wc -l <"$WORK/run/metrics.jsonl")" -ge 3 ]; do
    kill -0 "$job" 2>/dev/null || fail "the job ended before training got under way"
    sleep 0.1
  done
  local pid; pid="$(rank_pid 1)"
  [ -n "$pid" ] || fail "rank 1 not found"
  local start=$SECONDS
  kill "-$signal" "$pid"
  while kill -0 "$job" 2>/dev/null; do
    [ $((SECONDS - start)) -lt "$LIMIT_S" ] || { kill -TERM "$job"; fail "the job still ran ${LIMIT_S}s after SIG$signal to rank 1"; }
    sleep 0.1
  done
  local status=0
  wait "$job" || status=$?
  local took=$((SECONDS - start))
  [ "$status" -ne 0 ] || fail "the job exited 0 after SIG$signal to rank 1"
  local expected
  for expected in "$@"; do
    grep -qE "$expected" "$WORK/out.log" || fail "no message matching '$expected'"
  done
  echo "ok: SIG$signal to rank 1 ended the job ${took}s later:"
  grep -E "exited on signal|^dijiang: error:" "$WORK/out.log"
}

# A killed rank is noticed by mpirun at once: the collective timeout stays long.
failure KILL 120 "rank 1 .*exited on signal 9"
# A stopped rank is noticed only by the timeout: short, yet long enough that a loaded machine
# does not trip it before the signal. Both waiting ranks report, by their own timeout or the end
# the other announced, and the first to end the job timed out.
waited='^dijiang: error: rank %s of 3 \(.*\): .* did not complete( within 10 s;| \(waited [0-9.]+ s\); rank [0-9] is ending)'
# shellcheck disable=SC2059
failure STOP 10 "$(printf "$waited" 0)" "$(printf "$waited" 2)" \
  "rank [02] of 3 \(.*\): .* did not complete within 10 s"
