# A training run stopped by SIGTERM writes a checkpoint and exits cleanly; the checkpoint loads and
# the run resumes from it.
source "$(dirname "$0")/lib.bash"
cd "$SOURCE_DIR"
OUT="$WORK/run"
"$DIJIANG" train configs/micro/tiny-dijiang.yaml checkpoint.dir="$OUT" schedule.steps=100000 checkpoint.every=100000 \
  logging.every=1000 >"$WORK/train.log" 2>&1 &
pid=$!
# However long the start takes (a loaded machine), as long as the run lives.
until [ -s "$OUT/metrics.jsonl" ]; do
  kill -0 "$pid" 2>/dev/null || { cat "$WORK/train.log" >&2; die "training ended before its first step"; }
  sleep 0.1
done
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
[ "$status" -eq 0 ] || { cat "$WORK/train.log" >&2; die "exit status $status after SIGTERM"; }
grep -q "stop requested: checkpoint" "$WORK/train.log" || die "no checkpoint message"
ckpt=$(ls "$OUT"/ckpt-*.h5 | tail -1)
"$DIJIANG" -q inspect --model "$ckpt" | grep -q "attention DiJiang" || die "checkpoint does not load"
"$DIJIANG" -q eval --model "$ckpt" --tokens data/tiny-neox/eval_tokens.npy --seq-len 64 --json | grep -q '"loss"' \
  || die "checkpoint does not evaluate"
step=$(sed -E 's/.*ckpt-0*([0-9]+)\.h5/\1/' <<<"$ckpt")
"$DIJIANG" train configs/micro/tiny-dijiang.yaml checkpoint.dir="$OUT" schedule.steps=$((step + 2)) --resume \
  >"$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log" >&2; die "resume failed"; }
grep -q "resumed from .*ckpt-0*$step.h5 at step $step" "$WORK/resume.log" || { cat "$WORK/resume.log" >&2; die "did not resume"; }
[ -f "$OUT/loss.png" ] || die "no loss plot"
echo "SIGTERM at step $step: checkpoint written, loaded and resumed"
