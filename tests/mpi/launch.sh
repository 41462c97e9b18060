#!/usr/bin/env bash
# The launch scripts: launch/mpirun.sh runs a 2-rank job and refuses bad arguments; SIGTERM to it
# (what a scheduler sends at the time limit) stops every rank with a complete checkpoint that
# resumes, and the job exits 0; a rank that dies ends the job non-zero;
# launch/slurm.sbatch parses (there is no Slurm here to run it).
# Usage: launch.sh DIJIANG SOURCE_DIR
set -euo pipefail
export DIJIANG="$1"
SOURCE_DIR="$2"
WORK="$(mktemp -d)"
trap 'pkill -KILL -f "$WORK" 2>/dev/null || true; rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"
fail() { echo "FAIL: $*" >&2; exit 1; }

launch/mpirun.sh -n 2 configs/micro/tiny-dijiang.yaml schedule.steps=3 checkpoint.every=3 \
  "checkpoint.dir=$WORK/run" distributed.zero_stage=1 >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log"; fail "launch"; }
grep -q "launch: 2 ranks, 1 threads each" "$WORK/run.log" || fail "no launch line"
[ -f "$WORK/run/ckpt-00000003/COMPLETE" ] || fail "no complete 2-rank checkpoint"
[ -f "$WORK/run/resources.json" ] || fail "no resources.json"
echo "ok: launch/mpirun.sh -n 2"

status=0
launch/mpirun.sh configs/micro/tiny-dijiang.yaml >"$WORK/bad.log" 2>&1 || status=$?
[ "$status" -eq 2 ] && grep -q "RANKS (a positive number) is required" "$WORK/bad.log" || fail "missing -n accepted"
status=0
launch/mpirun.sh -n 2 --hostfile "$WORK/absent" configs/micro/tiny-dijiang.yaml >"$WORK/bad.log" 2>&1 || status=$?
[ "$status" -eq 2 ] && grep -q "cannot read hostfile" "$WORK/bad.log" || fail "missing hostfile accepted"
echo "ok: bad arguments refused"

# under_way JOB DIR: waits until the job writing DIR has logged 3 steps; fails if it ends first.
under_way() {
  until [ -s "$2/metrics.jsonl" ] && [ "$(wc -l <"$2/metrics.jsonl")" -ge 3 ]; do
    kill -0 "$1" 2>/dev/null || { cat "$WORK/$(basename "$2").log"; fail "the job ended before training got under way"; }
    sleep 0.1
  done
}

launch/mpirun.sh -n 2 configs/micro/tiny-dijiang.yaml schedule.steps=100000 checkpoint.every=100000 \
  "checkpoint.dir=$WORK/long" >"$WORK/long.log" 2>&1 &
job=$!
under_way "$job" "$WORK/long"
kill -TERM "$job"
status=0
wait "$job" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/long.log"; fail "exit status $status after SIGTERM"; }
grep -q "stop requested: checkpoint" "$WORK/long.log" || { cat "$WORK/long.log"; fail "no checkpoint on SIGTERM"; }
checkpoint=$(ls -d "$WORK"/long/ckpt-*)
[ -f "$checkpoint/COMPLETE" ] || fail "the SIGTERM checkpoint is incomplete"
step=$((10#${checkpoint##*ckpt-}))
launch/mpirun.sh -n 2 configs/micro/tiny-dijiang.yaml schedule.steps=$((step + 2)) checkpoint.every=100000 \
  "checkpoint.dir=$WORK/long" --resume >"$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log"; fail "resume"; }
grep -q "resumed from .* at step $step" "$WORK/resume.log" || fail "did not resume at step $step"
echo "ok: SIGTERM to launch/mpirun.sh checkpointed step $step, which resumed"

# A rank that dies ends the job launched by the script, non-zero, with mpirun's message.
launch/mpirun.sh -n 2 configs/micro/tiny-dijiang.yaml schedule.steps=100000 checkpoint.every=100000 \
  "checkpoint.dir=$WORK/killed" >"$WORK/killed.log" 2>&1 &
job=$!
under_way "$job" "$WORK/killed"
rank1=""
for pid in $(pgrep -f "checkpoint.dir=$WORK/killed" || true); do
  grep -qz "^OMPI_COMM_WORLD_RANK=1\$" "/proc/$pid/environ" 2>/dev/null && rank1="$pid"
done
[ -n "$rank1" ] || fail "rank 1 not found"
kill -KILL "$rank1"
status=0
wait "$job" || status=$?
[ "$status" -ne 0 ] || { cat "$WORK/killed.log"; fail "exit status 0 after a rank was killed"; }
grep -q "rank 1 .*exited on signal 9" "$WORK/killed.log" || { cat "$WORK/killed.log"; fail "no message naming the killed rank"; }
echo "ok: a killed rank ended the job with status $status"

bash -n launch/slurm.sbatch || fail "launch/slurm.sbatch does not parse"
echo "ok: launch/slurm.sbatch parses"
