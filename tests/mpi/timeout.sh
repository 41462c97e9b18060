#!/usr/bin/env bash
# A rank that does not join a collective: the ranks waiting for it each report it in one line and
# the job ends non-zero without waiting for it. The late rank sleeps for an hour (sleep) or stops
# itself with SIGSTOP (stop), and the others time out after 1 s; or it fails and ends the job
# itself (fail), and the others, within their 600 s timeout, report that it ends the job.
# The job must end long before the sleeper would wake or the timeout of `fail` would pass:
# LIMIT_S is only there to report a job that waits, not a measure of speed, so a slow or loaded
# machine passes as well as a fast one (the job normally ends within seconds).
# Usage: bash timeout.sh MPIEXEC COMM_CHECK sleep|stop|fail
set -euo pipefail
MPIEXEC="$1"
COMM_CHECK="$2"
LATE="$3"
LIMIT_S=300
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1

die() { echo "FAIL: $*" >&2; exit 1; }

start=$SECONDS
"$MPIEXEC" --oversubscribe --allow-run-as-root -np 3 "$COMM_CHECK" timeout "$LATE" \
  >"$WORK/stdout" 2>"$WORK/stderr" &
job=$!
while kill -0 "$job" 2>/dev/null; do
  # mpirun answers SIGTERM by ending every rank.
  [ $((SECONDS - start)) -lt "$LIMIT_S" ] || { kill -TERM "$job"; cat "$WORK/stderr" >&2; die "the job waited for rank 1: still running after ${LIMIT_S} s"; }
  sleep 0.1
done
status=0
wait "$job" || status=$?
elapsed=$((SECONDS - start))
cat "$WORK/stderr" >&2

[ "$status" -ne 0 ] || die "the job succeeded although rank 1 did not join"
! grep -q "FAIL" "$WORK/stderr" || die "a check failed"

# line RANK: the start of the line of that rank about the probe.
line() { echo "^dijiang: error: rank $1 of 3 \([^)]+\): all_reduce of the timeout probe did not complete"; }
timed_out=' within 1 s; a peer rank has probably failed or stopped$'
ended=' \(waited [0-9.]+ s\); rank [0-9] is ending the job$'
# Every waiting rank reports: its own timeout, or the end another rank announced while it waited.
for rank in 0 2; do
  if [ "$LATE" = fail ]; then
    # Rank 1 may fail while the others are still leaving the barrier before the probe.
    grep -qE "^dijiang: error: rank $rank of 3 \([^)]+\): (barrier|all_reduce of the timeout probe) did not complete \(waited [0-9.]+ s\); rank 1 is ending the job$" \
      "$WORK/stderr" || die "stderr lacks the line of waiting rank $rank naming rank 1"
  else
    grep -qE "$(line $rank)($timed_out|$ended)" "$WORK/stderr" || die "stderr lacks the line of waiting rank $rank"
  fi
done
case "$LATE" in
  sleep|stop)
    # The first to end the job timed out.
    grep -qE "$(line '[02]')$timed_out" "$WORK/stderr" || die "no waiting rank reports its own timeout" ;;
  fail)
    grep -qE "^dijiang: error: rank 1 of 3 \([^)]+\): failing on purpose$" "$WORK/stderr" \
      || die "stderr lacks the line of the failing rank" ;;
esac
if [ "$LATE" = sleep ]; then
  ! grep -qE "$(line 1)" "$WORK/stderr" || die "the sleeping rank reported"
fi
echo "ok: rank 1 ($LATE); the job ended with status $status after ${elapsed} s; the ranks said:"
grep -E "^dijiang: error: " "$WORK/stderr"
