# A rank that joins a collective long after the timeout: the waiting ranks report it in one line
# and the job ends non-zero well before the late rank would have joined.
# Usage: bash timeout.sh MPIEXEC COMM_CHECK
set -euo pipefail
MPIEXEC="$1"
COMM_CHECK="$2"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1

die() { echo "FAIL: $*" >&2; exit 1; }

start=$SECONDS
status=0
timeout 60 "$MPIEXEC" --oversubscribe --allow-run-as-root -np 3 "$COMM_CHECK" timeout \
  >"$WORK/stdout" 2>"$WORK/stderr" || status=$?
elapsed=$((SECONDS - start))
cat "$WORK/stderr" >&2

# Rank 1 sleeps 30 s; the others time out after 1 s. `timeout` exits 124 if the job hung.
[ "$status" -ne 0 ] || die "the job succeeded although rank 1 joined after the timeout"
[ "$status" -ne 124 ] || die "the job hung until killed"
[ "$elapsed" -le 20 ] || die "the job took ${elapsed} s to end after a 1 s timeout"
line='^dijiang: error: rank 0 of 3 \([^)]+\): all_reduce of the timeout probe did not complete within 1 s; a peer rank has probably failed or stopped$'
grep -qE "$line" "$WORK/stderr" || die "stderr lacks the timeout line of rank 0"
! grep -q "FAIL" "$WORK/stderr" || die "a check failed"
echo "ok: exit status $status after ${elapsed} s: $(grep -m1 -E "$line" "$WORK/stderr")"
