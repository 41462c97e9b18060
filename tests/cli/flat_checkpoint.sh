# Flat (per-rank) checkpoints: a training checkpoint split into 3 rank files evaluates and inspects
# like the file, merges back to the same bytes and resumes training; damaged directories and bad
# requests get one clear error line.
source "$(dirname "$0")/lib.bash"
cd "$SOURCE_DIR"
TOKENS=data/tiny-neox/eval_tokens.npy
loss() { "$DIJIANG" -q eval --model "$1" --tokens "$TOKENS" --seq-len 64 --batch 4 --json; }
# inspect --json without the path, which differs between the copies.
summary() { "$DIJIANG" -q inspect --model "$1" --json | sed -E 's/"path":"[^"]*",?//'; }
# expect_error NEEDLE COMMAND...: as expect_failure, and the error is a single line.
expect_error() {
  expect_failure "$@"
  [ "$(grep -c '^dijiang: error:' "$WORK/stderr")" -eq 1 ] || { cat "$WORK/stderr" >&2; die "not one error line"; }
}

OUT="$WORK/run"
"$DIJIANG" train configs/micro/tiny-dijiang.yaml checkpoint.dir="$OUT" schedule.steps=2 schedule.warmup=1 \
  checkpoint.every=2 logging.every=1 >"$WORK/train.log" 2>&1 || { cat "$WORK/train.log" >&2; die "training failed"; }
ckpt="$OUT/ckpt-00000002.h5"
[ -f "$ckpt" ] || { ls "$OUT" >&2; die "no checkpoint at step 2"; }

# Split into 3 ranks: the directory holds 3 rank files and the marker, nothing else.
"$DIJIANG" -q convert --from "$ckpt" --to "$WORK/flat" --ranks 3
[ "$(ls "$WORK/flat" | tr '\n' ' ')" = "COMPLETE rank-00000-of-00003.h5 rank-00001-of-00003.h5 rank-00002-of-00003.h5 " ] \
  || die "flat directory holds: $(ls -A "$WORK/flat")"

# The directory evaluates and inspects exactly like the file, training metadata included.
file_loss=$(loss "$ckpt")
flat_loss=$(loss "$WORK/flat")
[ "$flat_loss" = "$file_loss" ] || die "flat $flat_loss vs file $file_loss"
[ "$(summary "$WORK/flat")" = "$(summary "$ckpt")" ] || die "inspect differs: $(summary "$WORK/flat")"
summary "$WORK/flat" | grep -q '"kind":"training"' || die "metadata lost: $(summary "$WORK/flat")"
"$DIJIANG" -q inspect --model "$WORK/flat" | grep -q "attention DiJiang" || die "inspect text output"

# Merged back: the very bytes the trainer wrote, optimizer state included.
"$DIJIANG" -q convert --from "$WORK/flat" --to "$WORK/merged.h5"
cmp -s "$ckpt" "$WORK/merged.h5" || die "the merged checkpoint differs from the original"

# Resharded 3 -> 2 ranks, merged again: still the same bytes.
"$DIJIANG" -q convert --from "$WORK/flat" --to "$WORK/flat2" --ranks 2
[ -f "$WORK/flat2/rank-00001-of-00002.h5" ] || die "reshard wrote no rank 1 of 2"
[ "$(loss "$WORK/flat2")" = "$file_loss" ] || die "resharded loss $(loss "$WORK/flat2")"
"$DIJIANG" -q convert --from "$WORK/flat2" --to "$WORK/merged2.h5"
cmp -s "$ckpt" "$WORK/merged2.h5" || die "the resharded and merged checkpoint differs from the original"

# The merged file resumes training where the original stopped.
mkdir -p "$WORK/resumed"
cp "$WORK/merged.h5" "$WORK/resumed/ckpt-00000002.h5"
"$DIJIANG" train configs/micro/tiny-dijiang.yaml checkpoint.dir="$WORK/resumed" schedule.steps=3 schedule.warmup=1 \
  checkpoint.every=2 logging.every=1 --resume >"$WORK/resume.log" 2>&1 || { cat "$WORK/resume.log" >&2; die "resume failed"; }
grep -q "resumed from .*ckpt-00000002.h5 at step 2" "$WORK/resume.log" || { cat "$WORK/resume.log" >&2; die "did not resume"; }

# Converting to another dtype writes the model alone, as for any source.
"$DIJIANG" -q convert --from "$WORK/flat" --to "$WORK/model16.h5" --dtype f16
"$DIJIANG" -q inspect --model "$WORK/model16.h5" --json | grep -q '"dtypes":{"F16":' || die "f16 model"

# Bad requests.
"$DIJIANG" -q convert --from data/tiny-neox --to "$WORK/model.h5"
expect_error "not a training checkpoint" "$DIJIANG" convert --from "$WORK/model.h5" --to "$WORK/bad" --ranks 2
expect_error "not a training checkpoint" "$DIJIANG" convert --from data/tiny-neox --to "$WORK/bad" --ranks 2
expect_error "--ranks" "$DIJIANG" convert --from "$ckpt" --to "$WORK/bad" --ranks 0
expect_error "--dtype" "$DIJIANG" convert --from "$ckpt" --to "$WORK/bad" --ranks 2 --dtype bf16
mkdir -p "$WORK/taken" && touch "$WORK/taken/keep"
expect_error "refusing to replace it" "$DIJIANG" convert --from "$ckpt" --to "$WORK/taken" --ranks 2
[ -f "$WORK/taken/keep" ] || die "convert touched an existing directory"
[ ! -e "$WORK/bad" ] || die "a failed convert left an output"

# Damaged directories.
damaged() { rm -rf "$WORK/damaged"; cp -r "$WORK/flat" "$WORK/damaged"; }
damaged; rm "$WORK/damaged/COMPLETE"
expect_error "$WORK/damaged: no COMPLETE marker" "$DIJIANG" eval --model "$WORK/damaged" --tokens "$TOKENS" --seq-len 64
damaged; rm "$WORK/damaged/rank-00001-of-00003.h5"
expect_error "missing rank file rank-00001-of-00003.h5" "$DIJIANG" inspect --model "$WORK/damaged"
damaged; cp "$WORK/flat2/rank-00001-of-00002.h5" "$WORK/damaged/"
expect_error "unexpected rank file rank-00001-of-00002.h5" "$DIJIANG" convert --from "$WORK/damaged" --to "$WORK/bad.h5"
damaged; f="$WORK/damaged/rank-00002-of-00003.h5"; truncate -s $(( $(stat -c %s "$f") / 2 )) "$f"
expect_error "$f: holds" "$DIJIANG" eval --model "$WORK/damaged" --tokens "$TOKENS" --seq-len 64
grep -q "truncated" "$WORK/stderr" || die "no mention of truncation: $(cat "$WORK/stderr")"
damaged; cp "$WORK/flat2/rank-00000-of-00002.h5" "$WORK/damaged/rank-00000-of-00003.h5"
expect_error "holds rank 0 of 2, but its name says rank 0 of 3" "$DIJIANG" export --from "$WORK/damaged" --to "$WORK/bad" --format hf
[ ! -e "$WORK/bad.h5" ] && [ ! -e "$WORK/bad" ] || die "a failed command left an output"

rm -rf "$WORK/damaged"
ls -A "$WORK" | grep -q '^\.' && die "temporary files left behind: $(ls -A "$WORK")"
echo "flat checkpoint: split into 3 ranks, loss $(json_field "$file_loss" loss) unchanged, merged back byte for byte"
