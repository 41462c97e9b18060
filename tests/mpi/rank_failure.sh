#!/usr/bin/env bash
# A rank that dies mid-run ends the job with a message naming it, and a rank that stops answering
# ends it through the collective timeout with a message naming the rank that waited; neither hangs.
# Usage: rank_failure.sh DIJIANG MPIEXEC SOURCE_DIR
set -euo pipefail
DIJIANG="$1" MPIEXEC="$2" SOURCE_DIR="$3"
WORK="$(mktemp -d)"
trap 'pkill -KILL -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"

# rank_pid RANK: the pid of that rank of the job writing into $WORK/run.
rank_pid() {
  for pid in $(pgrep -f "checkpoint.dir=$WORK/run" || true); do
    grep -qz "^OMPI_COMM_WORLD_RANK=$1\$" "/proc/$pid/environ" 2>/dev/null && { echo "$pid"; return; }
  done
}

failure() {  # SIGNAL TIMEOUT_S EXPECTED-TEXT
  local signal="$1" timeout="$2" expected="$3"
  rm -rf "$WORK/run"
  local start=$SECONDS
  "$MPIEXEC" --oversubscribe --allow-run-as-root -np 3 "$DIJIANG" train configs/micro/tiny-dijiang.yaml \
    data.seq_len=32 schedule.steps=100000 checkpoint.every=100000 batch.micro_batch=1 batch.grad_accum=3 \
    distributed.timeout_s="$timeout" "checkpoint.dir=$WORK/run" >"$WORK/out.log" 2>&1 &
  local job=$!
  # Wait until training is under way (step lines in the metrics), then hit rank 1.
  for _ in $(seq 600); do
    [ -s "$WORK/run/metrics.jsonl" ] && [ "$(wc -l <"$WORK/run/metrics.jsonl")" -ge 3 ] && break
    sleep 0.1
  done
  local pid; pid="$(rank_pid 1)"
  [ -n "$pid" ] || { cat "$WORK/out.log"; echo "FAIL: rank 1 not found"; exit 1; }
  kill "-$signal" "$pid"
  local status=0
  wait "$job" || status=$?
  local took=$((SECONDS - start))
  [ "$status" -ne 0 ] || { echo "FAIL: the job exited 0 after SIG$signal to rank 1"; exit 1; }
  [ "$took" -lt 60 ] || { echo "FAIL: the job took ${took}s to end"; exit 1; }
  grep -qE "$expected" "$WORK/out.log" || { cat "$WORK/out.log"; echo "FAIL: no message matching '$expected'"; exit 1; }
  echo "ok: SIG$signal to rank 1 ended the job in ${took}s: $(grep -m1 -E "$expected" "$WORK/out.log")"
}

# A killed rank is noticed by mpirun at once: the collective timeout stays long.
failure KILL 120 "rank 1 .*exited on signal 9"
# A stopped rank is noticed only by the timeout: short, yet long enough that a loaded machine
# does not trip it before the signal.
failure STOP 10 "rank [02] of 3 \(.*\): .* did not complete within 10 s"
