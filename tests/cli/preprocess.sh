# dijiang preprocess: jsonl / text documents to a GPT-NeoX indexed dataset, byte-identical to the
# goldens of tests/fixtures/make_indexed_fixtures.py (GPT-NeoX's writer logic, HF tokenizers).
source "$(dirname "$0")/lib.bash"
GOLDEN="$FIXTURES/indexed"

out="$("$DIJIANG" -q preprocess --input "$GOLDEN/docs.jsonl" --format jsonl --output-prefix "$WORK/docs")"
cmp "$WORK/docs.bin" "$GOLDEN/docs.bin" || die "docs.bin differs from the golden"
cmp "$WORK/docs.idx" "$GOLDEN/docs.idx" || die "docs.idx differs from the golden"
grep -qF "20 documents, 319 tokens" <<<"$out" || die "preprocess printed '$out'"
echo "ok: $out"

# Several inputs are read in order into one dataset.
out="$("$DIJIANG" -q preprocess --input "$GOLDEN/docs.jsonl" --input "$GOLDEN/shard2.jsonl" --format jsonl \
  --output-prefix "$WORK/both")"
grep -qF "23 documents, 350 tokens" <<<"$out" || die "two inputs: '$out'"
cmp "$WORK/both.bin" <(cat "$GOLDEN/docs.bin" "$GOLDEN/shard2.bin") || die "two inputs: .bin is not the shards joined"

out="$("$DIJIANG" -q preprocess --input "$GOLDEN/docs.jsonl" --format jsonl --output-prefix "$WORK/noeod" --no-append-eod)"
grep -qF "20 documents, 299 tokens" <<<"$out" || die "--no-append-eod: '$out'"

# --format text: each file is one document, the same as a jsonl line with that text; an empty one
# is skipped.
printf 'Hello, I am a language model.\nSecond line.' >"$WORK/a.txt"
printf '' >"$WORK/empty.txt"
printf '{"text": "Hello, I am a language model.\\nSecond line."}\n\n{"text": ""}\n' >"$WORK/a.jsonl"
"$DIJIANG" -q preprocess --input "$WORK/a.txt" --input "$WORK/empty.txt" --format text --output-prefix "$WORK/text" >/dev/null
"$DIJIANG" -q preprocess --input "$WORK/a.jsonl" --format jsonl --output-prefix "$WORK/json" >/dev/null
cmp "$WORK/text.bin" "$WORK/json.bin" && cmp "$WORK/text.idx" "$WORK/json.idx" || die "text and jsonl differ"
echo "ok: --format text matches jsonl"

# Failures name the file and line and leave no output files behind.
mkdir "$WORK/out"
{ head -n 4 "$GOLDEN/docs.jsonl"; echo '{"text": 5}'; } >"$WORK/bad.jsonl"
expect_failure "bad.jsonl:5: \"text\" is not a string" \
  "$DIJIANG" preprocess --input "$GOLDEN/docs.jsonl" --input "$WORK/bad.jsonl" --format jsonl --output-prefix "$WORK/out/x"
{ head -n 2 "$GOLDEN/docs.jsonl"; echo '{"text": "unterminated'; } >"$WORK/bad.jsonl"
expect_failure "bad.jsonl:3: not valid JSON" \
  "$DIJIANG" preprocess --input "$WORK/bad.jsonl" --format jsonl --output-prefix "$WORK/out/x"
printf '{"txt": "a"}\n' >"$WORK/bad.jsonl"
expect_failure "bad.jsonl:1: no \"text\" field" \
  "$DIJIANG" preprocess --input "$WORK/bad.jsonl" --format jsonl --output-prefix "$WORK/out/x"
printf 'caf\xe9\n' >"$WORK/bad.txt"
expect_failure "bad.txt" "$DIJIANG" preprocess --input "$WORK/bad.txt" --format text --output-prefix "$WORK/out/x"
expect_failure "cannot open $WORK/missing.jsonl" \
  "$DIJIANG" preprocess --input "$WORK/missing.jsonl" --format jsonl --output-prefix "$WORK/out/x"
[ -z "$(ls -A "$WORK/out")" ] || die "a failed preprocess left files: $(ls -A "$WORK/out")"
echo "preprocess: all checks passed"
