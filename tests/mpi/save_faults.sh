#!/usr/bin/env bash
# Faults while the ranks of a job write a checkpoint (write_faults.so, tests/faults/README.md):
# rank 1 killed as it starts writing its file of the step-4 checkpoint ends the job without a
# COMPLETE step-4 checkpoint, and --resume takes step 2 and ends where an uninterrupted run does;
# rank 1 finding the disk full ends the job with one error line from every rank's agreement, the
# step-2 checkpoint intact and the partial one removed.
# Usage: save_faults.sh DIJIANG MPIEXEC SOURCE_DIR WRITE_FAULTS_LIBRARY
set -euo pipefail
DIJIANG="$1" MPIEXEC="$2" SOURCE_DIR="$3" FAULTS="$4"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"
TOKENS=data/tiny-neox/eval_tokens.npy

die() { echo "FAIL: $*" >&2; exit 1; }
train() {  # train OUT_DIR STEPS LOG [ARGS...]: two ranks, ZeRO stage 2
  local out="$1" steps="$2" log="$3"; shift 3
  "$MPIEXEC" --oversubscribe --allow-run-as-root -np 2 -x LD_PRELOAD -x DIJIANG_FAULT -x DIJIANG_FAULT_PATH \
    "$DIJIANG" train configs/micro/tiny-dijiang.yaml checkpoint.dir="$out" schedule.steps="$steps" \
    schedule.warmup=1 checkpoint.every=2 logging.every=1 distributed.zero_stage=2 "$@" >"$WORK/$log.log" 2>&1
}
intact_step2() {  # intact_step2 WHAT: the step-2 checkpoint is the newest and intact
  [ ! -e "$WORK/run/ckpt-00000004" ] || die "$1: a step-4 checkpoint exists: $(ls -A "$WORK/run/ckpt-00000004")"
  "$DIJIANG" -q inspect --verify "$WORK/run/ckpt-00000002" >/dev/null || die "$1: the step-2 checkpoint is damaged"
}
export LD_PRELOAD="" DIJIANG_FAULT="" DIJIANG_FAULT_PATH=""

train "$WORK/run" 2 first || { cat "$WORK/first.log" >&2; die "training failed"; }
[ -f "$WORK/run/ckpt-00000002/COMPLETE" ] || die "no step-2 checkpoint"

# Rank 1 killed at its first write of the step-4 checkpoint.
status=0
LD_PRELOAD="$FAULTS" DIJIANG_FAULT=kill DIJIANG_FAULT_PATH=ckpt-00000004.partial/.rank-00001-of-00002 \
  train "$WORK/run" 4 killed --resume || status=$?
[ "$status" -ne 0 ] || die "the job with a killed rank exited 0"
grep -qE "exited on signal 9|killed" "$WORK/killed.log" || { cat "$WORK/killed.log" >&2; die "no word of the killed rank"; }
intact_step2 "killed rank"
echo "ok: rank 1 killed while writing: exit status $status, no step-4 checkpoint"

# Rank 1 finds the disk full.
status=0
LD_PRELOAD="$FAULTS" DIJIANG_FAULT=enospc DIJIANG_FAULT_PATH=ckpt-00000004.partial/.rank-00001-of-00002 \
  train "$WORK/run" 4 full --resume || status=$?
[ "$status" -eq 1 ] || { cat "$WORK/full.log" >&2; die "full disk: exit status $status"; }
[ "$(grep -c '^dijiang: error:' "$WORK/full.log")" -eq 1 ] || { cat "$WORK/full.log" >&2; die "full disk: not one error line"; }
grep '^dijiang: error:' "$WORK/full.log" | grep -q "rank-00001-of-00002.h5: .*(No space left on device)" \
  || { cat "$WORK/full.log" >&2; die "full disk: the error does not say which file and why"; }
intact_step2 "full disk"
if ls -A "$WORK/run" | grep -q '^\.'; then die "full disk: left behind: $(ls -A "$WORK/run" | grep '^\.')"; fi
echo "ok: rank 1 found the disk full: $(grep '^dijiang: error:' "$WORK/full.log")"

# Resumed without faults: from step 2, to where an uninterrupted run ends.
train "$WORK/run" 4 resumed --resume || { cat "$WORK/resumed.log" >&2; die "resume failed"; }
grep -q "resumed from $WORK/run/ckpt-00000002 at step 2" "$WORK/resumed.log" || die "did not resume at step 2"
train "$WORK/straight" 4 straight || { cat "$WORK/straight.log" >&2; die "the uninterrupted run failed"; }
a=$("$DIJIANG" -q eval --model "$WORK/run/ckpt-00000004" --tokens "$TOKENS" --seq-len 64 --json)
b=$("$DIJIANG" -q eval --model "$WORK/straight/ckpt-00000004" --tokens "$TOKENS" --seq-len 64 --json)
[ "$a" = "$b" ] || die "after the faults $a, uninterrupted $b"
echo "save faults: resumed from step 2 after both; step 4 evaluates as an uninterrupted run ($a)"
