# Damaged checkpoints: copies of a native training checkpoint and of a per-rank (flat) one, each
# with one byte flipped at a random position (200 copies in all, a fixed seed). Every `eval`,
# `inspect --model`, `inspect --verify` and `train --resume` on a copy ends with exit status 1 and
# one error line naming the file, never with a signal; `--resume` passes over a damaged newest
# checkpoint for the previous intact one.
source "$(dirname "$0")/lib.bash"
cd "$SOURCE_DIR"
TOKENS=data/tiny-neox/eval_tokens.npy
COPIES=${DAMAGED_COPIES:-200}
RANDOM=20261202

train() {  # train OUT_DIR STEPS [ARGS...]
  local out="$1" steps="$2"; shift 2
  "$DIJIANG" train configs/micro/tiny-dijiang.yaml checkpoint.dir="$out" schedule.steps="$steps" schedule.warmup=1 \
    checkpoint.every=2 checkpoint.keep=3 logging.every=1 "$@"
}

# One error line, exit status 1.
expect_one_error() {  # expect_one_error WHAT COMMAND...
  local what="$1" status=0; shift
  "$@" >"$WORK/stdout" 2>"$WORK/stderr" || status=$?
  if [ "$status" -ne 1 ] || [ "$(grep -c '^dijiang: error:' "$WORK/stderr")" -ne 1 ]; then
    cat "$WORK/stderr" >&2
    die "$what: exit status $status (expected 1 and one error line): $*"
  fi
}

train "$WORK/run" 4 >"$WORK/train.log" 2>&1 || { cat "$WORK/train.log" >&2; die "training failed"; }
native="$WORK/run/ckpt-00000004.h5"
"$DIJIANG" -q convert --from "$native" --to "$WORK/flat" --ranks 2
"$DIJIANG" -q inspect --verify "$WORK/run" >"$WORK/verify.txt"
[ "$(grep -c '^intact ' "$WORK/verify.txt")" -eq 2 ] || die "inspect --verify: $(cat "$WORK/verify.txt")"
"$DIJIANG" -q inspect --verify "$WORK/flat" --json | grep -q '"damaged":0' || die "flat checkpoint not intact"

# flip FILE: inverts one bit of the byte at a random position; prints the position.
flip() {
  local file="$1" size at byte
  size=$(stat -c %s "$file")
  at=$(( (RANDOM * 32768 + RANDOM) % size ))
  byte=$(od -An -tu1 -j "$at" -N1 "$file" | tr -d ' ')
  printf "\\x$(printf %02x $(( byte ^ (1 << (RANDOM % 8)) )))" | dd of="$file" bs=1 seek="$at" conv=notrunc status=none
  echo "$at"
}

for ((i = 0; i < COPIES; i++)); do
  rm -rf "$WORK/copy"
  mkdir -p "$WORK/copy"
  if (( i % 2 == 0 )); then
    cp "$native" "$WORK/copy/ckpt-00000004.h5"
    model="$WORK/copy/ckpt-00000004.h5"
    file="$model"
  else
    cp -r "$WORK/flat" "$WORK/copy/ckpt-00000004"
    model="$WORK/copy/ckpt-00000004"
    file="$model/rank-0000$(( RANDOM % 2 ))-of-00002.h5"
  fi
  at=$(flip "$file")
  what="copy $i, $(basename "$file") byte $at"
  expect_one_error "$what: eval" "$DIJIANG" eval --model "$model" --tokens "$TOKENS" --seq-len 64
  grep -qF "$file" "$WORK/stderr" || die "$what: the error does not name the file: $(cat "$WORK/stderr")"
  expect_one_error "$what: inspect" "$DIJIANG" inspect --model "$model"
  expect_one_error "$what: inspect --verify" "$DIJIANG" inspect --verify "$model"
  grep -q '^damaged ' "$WORK/stdout" || die "$what: inspect --verify did not report it damaged"
  expect_one_error "$what: --resume" train "$WORK/copy" 6 --resume
  grep -q "is intact" "$WORK/stderr" || die "$what: --resume: $(cat "$WORK/stderr")"
done
echo "damaged checkpoints: $COPIES copies with one flipped byte, each refused by eval, inspect, inspect --verify and --resume"

# --resume passes over the damaged newest checkpoint and continues from the one before.
cp -r "$WORK/run" "$WORK/resume"
flip "$WORK/resume/ckpt-00000004.h5" >/dev/null
train "$WORK/resume" 6 --resume >"$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log" >&2; die "resume failed"; }
grep -q "warning --resume: passing over a damaged checkpoint: $WORK/resume/ckpt-00000004.h5" "$WORK/resume.log" \
  || { cat "$WORK/resume.log" >&2; die "no warning about the damaged checkpoint"; }
grep -q "resumed from $WORK/resume/ckpt-00000002.h5 at step 2" "$WORK/resume.log" \
  || { cat "$WORK/resume.log" >&2; die "did not resume from step 2"; }
"$DIJIANG" -q inspect --verify "$WORK/resume" >/dev/null || die "the resumed run's checkpoints are not all intact"
# The resumed run reaches the losses of the uninterrupted one: step 4 was redone from step 2.
"$DIJIANG" -q eval --model "$WORK/resume/ckpt-00000006.h5" --tokens "$TOKENS" --seq-len 64 --json >"$WORK/a.json"
train "$WORK/straight" 6 >/dev/null 2>&1 || die "the uninterrupted run failed"
"$DIJIANG" -q eval --model "$WORK/straight/ckpt-00000006.h5" --tokens "$TOKENS" --seq-len 64 --json >"$WORK/b.json"
cmp -s "$WORK/a.json" "$WORK/b.json" || die "resumed $(cat "$WORK/a.json") vs uninterrupted $(cat "$WORK/b.json")"
echo "resume: passed over the damaged step-4 checkpoint, resumed at step 2, step 6 evaluates as the uninterrupted run"
