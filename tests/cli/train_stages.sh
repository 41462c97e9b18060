# The shipped two-stage micro experiment (attention transfer, then fine-tuning) from the command
# line: stage overrides, the stage lines of the log, the metrics and the plots of each stage, and
# `dijiang plot` of training and validation curves, with its refusals.
source "$(dirname "$0")/lib.bash"
cd "$SOURCE_DIR"
OUT="$WORK/run"
"$DIJIANG" train configs/micro/tiny-dijiang-transfer.yaml checkpoint.dir="$OUT" stages.0.steps=6 stages.1.steps=4 \
  stages.0.train=added_qk checkpoint.every=5 logging.eval_every=2 >"$WORK/train.log" 2>&1 \
  || { cat "$WORK/train.log" >&2; die "training failed"; }
grep -q "stage 1/2 'transfer' (attention_transfer): steps 0 -> 6, .* (the tensors the conversion added, and q and k)" \
  "$WORK/train.log" || die "no transfer stage line"
grep -q "stage 2/2 'finetune' (lm): steps 6 -> 10, .* (every trainable tensor)" "$WORK/train.log" \
  || die "no fine-tuning stage line"
grep -q "the teacher's query, key and value projections come from data/tiny-neox" "$WORK/train.log" \
  || die "no teacher line"
grep -q "step 5/10 \[transfer\]" "$WORK/train.log" || die "progress lines do not name the stage"
[ "$(grep -c '"objective":"attention_transfer"' "$OUT/metrics.jsonl")" -eq 6 ] || die "6 transfer steps expected"
[ "$(grep -c '"objective":"lm"' "$OUT/metrics.jsonl")" -eq 4 ] || die "4 fine-tuning steps expected"
for png in loss transfer lr; do
  [ "$(head -c 8 "$OUT/$png.png" | od -An -tx1 | tr -d ' ')" = 89504e470d0a1a0a ] || die "$png.png is not a PNG"
done

for metric in loss valid_loss valid_ppl; do
  "$DIJIANG" -q plot --run "staged=$OUT" --run "again=$OUT" --metric "$metric" --out "$WORK/$metric.png" \
    || die "plot --metric $metric failed"
  [ -s "$WORK/$metric.png" ] || die "no $metric.png"
done
expect_failure "--metric: valid_acc not in" "$DIJIANG" plot --run "a=$OUT" --metric valid_acc --out "$WORK/x.png"
expect_failure "metrics.jsonl: cannot open" "$DIJIANG" plot --run "a=$WORK/none" --out "$WORK/x.png"
expect_failure "expected NAME=DIRECTORY" "$DIJIANG" plot --run "$OUT" --out "$WORK/x.png"
grep -v valid "$OUT/metrics.jsonl" >"$WORK/train-only.jsonl"
mkdir -p "$WORK/novalid" && mv "$WORK/train-only.jsonl" "$WORK/novalid/metrics.jsonl"
expect_failure "no valid_ppl records" "$DIJIANG" plot --run "a=$WORK/novalid" --metric valid_ppl --out "$WORK/x.png"
expect_failure "stages.2 does not exist" "$DIJIANG" train configs/micro/tiny-dijiang-transfer.yaml stages.2.steps=1
echo "two stages from the command line: logs, metrics, plots"
