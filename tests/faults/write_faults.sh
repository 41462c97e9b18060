# Faults while a checkpoint is written, in one process: a full disk (ENOSPC, injected with
# write_faults.so) and a file size limit (ulimit -f, EFBIG). Each ends the run with exit status 1
# and one error line saying why; the previous checkpoint stays intact and newest, no temporary file
# is left, and --resume then continues as if nothing had happened.
# Usage: write_faults.sh DIJIANG SOURCE_DIR WRITE_FAULTS_LIBRARY
set -euo pipefail
DIJIANG="$1" SOURCE_DIR="$2" FAULTS="$3"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"
TOKENS=data/tiny-neox/eval_tokens.npy

die() { echo "FAIL: $*" >&2; exit 1; }
train() {  # train OUT_DIR STEPS [ARGS...]
  local out="$1" steps="$2"; shift 2
  "$DIJIANG" train configs/micro/tiny-dijiang.yaml checkpoint.dir="$out" schedule.steps="$steps" schedule.warmup=1 \
    checkpoint.every=2 logging.every=1 "$@"
}
# after_fault WHAT NEEDLE: the failed run's log has one error line with NEEDLE; the run directory
# holds the intact step-2 checkpoint as its newest and nothing hidden.
after_fault() {
  local what="$1" needle="$2"
  [ "$(grep -c '^dijiang: error:' "$WORK/fault.log")" -eq 1 ] || { cat "$WORK/fault.log" >&2; die "$what: not one error line"; }
  grep '^dijiang: error:' "$WORK/fault.log" | grep -qF -- "$needle" || { cat "$WORK/fault.log" >&2; die "$what: no '$needle'"; }
  [ ! -e "$WORK/run/ckpt-00000004.h5" ] || die "$what: a step-4 checkpoint exists"
  if ls -A "$WORK/run" | grep -q '^\.'; then die "$what: left behind: $(ls -A "$WORK/run" | grep '^\.')"; fi
  "$DIJIANG" -q inspect --verify "$WORK/run/ckpt-00000002.h5" >/dev/null || die "$what: the step-2 checkpoint is damaged"
  echo "ok: $what -> $(grep '^dijiang: error:' "$WORK/fault.log")"
}

train "$WORK/run" 2 >"$WORK/train.log" 2>&1 || { cat "$WORK/train.log" >&2; die "training failed"; }
[ -f "$WORK/run/ckpt-00000002.h5" ] || die "no step-2 checkpoint"

# The disk fills up 100 kB into the step-4 checkpoint.
status=0
DIJIANG_FAULT=enospc DIJIANG_FAULT_PATH=ckpt-00000004 DIJIANG_FAULT_AFTER=100000 LD_PRELOAD="$FAULTS" \
  train "$WORK/run" 4 --resume >"$WORK/fault.log" 2>&1 || status=$?
[ "$status" -eq 1 ] || { cat "$WORK/fault.log" >&2; die "full disk: exit status $status"; }
after_fault "full disk" "No space left on device"

# A 1 MiB file size limit, below the checkpoint's 2.8 MiB.
status=0
(ulimit -f 1024; train "$WORK/run" 4 --resume) >"$WORK/fault.log" 2>&1 || status=$?
[ "$status" -eq 1 ] || { cat "$WORK/fault.log" >&2; die "size limit: exit status $status"; }
after_fault "file size limit" "File too large"

# With room again, the run continues from step 2 and ends where an uninterrupted one does.
train "$WORK/run" 4 --resume >"$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log" >&2; die "resume failed"; }
grep -q "resumed from $WORK/run/ckpt-00000002.h5 at step 2" "$WORK/resume.log" || die "did not resume at step 2"
train "$WORK/straight" 4 >/dev/null 2>&1 || die "the uninterrupted run failed"
a=$("$DIJIANG" -q eval --model "$WORK/run/ckpt-00000004.h5" --tokens "$TOKENS" --seq-len 64 --json)
b=$("$DIJIANG" -q eval --model "$WORK/straight/ckpt-00000004.h5" --tokens "$TOKENS" --seq-len 64 --json)
[ "$a" = "$b" ] || die "after the faults $a, uninterrupted $b"
echo "write faults: the step-2 checkpoint survived both; resumed, step 4 evaluates as an uninterrupted run ($a)"
