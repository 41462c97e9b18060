# dijiang eval-tasks on the fixture tasks (tests/fixtures/tasks, scored by Hugging Face transformers
# in float64): the --json line and its values, the table, --limit, a DiJiang model, bad input.
source "$(dirname "$0")/lib.bash"
MODEL="$SOURCE_DIR/data/tiny-neox"
TASKS="$FIXTURES/tasks"

line="$("$DIJIANG" -q eval-tasks --model "$MODEL" --task "mc=$TASKS/mc.jsonl" --task "cloze=$TASKS/cloze.jsonl" --json --precision f64)"
grep -qE '^\{"tasks":\{"mc":\{"n":14,"acc":[0-9.e-]+,"acc_stderr":[0-9.e-]+,"acc_norm":[0-9.e-]+,"acc_norm_stderr":[0-9.e-]+\},"cloze":\{"n":9,"acc":[0-9.e-]+,"perplexity":[0-9.e+-]+\}\}\}$' <<<"$line" \
  || die "bad --json line: $line"
value() { sed -E "s/.*\"$1\":\\{[^}]*\"$2\":([^,}]*).*/\\1/" <<<"$line"; }
# expected.json: mc acc 0.5, acc_norm (the harness's, without the delimiter) 8/14; cloze acc 2/9,
# perplexity 12995.694.
awk -v a="$(value mc acc)" -v n="$(value mc acc_norm)" -v c="$(value cloze acc)" -v p="$(value cloze perplexity)" 'BEGIN {
  ok = a == 0.5 && (n - 8 / 14) ^ 2 < 1e-20 && (c - 2 / 9) ^ 2 < 1e-20 && (p / 12995.69408050014 - 1) ^ 2 < 1e-16
  exit !ok }' || die "scores differ from the transformers fixture: $line"
echo "ok: $line"

table="$("$DIJIANG" -q eval-tasks --model "$MODEL" --task "mc=$TASKS/mc.jsonl" --limit 4)"
grep -qE '^mc +4 ' <<<"$table" || die "--limit 4 did not score 4 items: $table"

"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/dijiang.h5" --attention dijiang --chunk 4
dj="$("$DIJIANG" -q eval-tasks --model "$WORK/dijiang.h5" --task "mc=$TASKS/mc.jsonl" --task "cloze=$TASKS/cloze.jsonl" --json)"
grep -q '"mc":{"n":14' <<<"$dj" || die "DiJiang model: $dj"
echo "ok: DiJiang $dj"

expect_failure "expected NAME=FILE.jsonl" "$DIJIANG" eval-tasks --model "$MODEL" --task "$TASKS/mc.jsonl"
expect_failure "the name mc is given twice" "$DIJIANG" eval-tasks --model "$MODEL" --task "mc=$TASKS/mc.jsonl" --task "mc=$TASKS/cloze.jsonl"
expect_failure "cannot open" "$DIJIANG" eval-tasks --model "$MODEL" --task "x=$WORK/missing.jsonl"
printf '{"context": "a", "choices": [" b", " c"], "gold": 0}\n{"context": "a", "choices": [" b"], "gold": 0}\n' >"$WORK/bad.jsonl"
expect_failure "bad.jsonl:2: \"choices\" must be an array of at least two strings" "$DIJIANG" eval-tasks --model "$MODEL" --task "x=$WORK/bad.jsonl"
printf '{"context": "Hello", "continuation": " world"}\n' >"$WORK/vocab.jsonl"
expect_failure "is outside the model's vocabulary of 1000" "$DIJIANG" eval-tasks --model "$MODEL" --task "v=$WORK/vocab.jsonl"
