# dijiang generate and bench generate on the tiny model and its DiJiang conversion: the --json line,
# greedy runs and seeded sampled runs reproduce, --max-new-tokens and --stop-at-eos, text streamed
# to stdout equals the JSON's text, bad input refused; bench generate writes its report and plot.
source "$(dirname "$0")/lib.bash"
MODEL="$SOURCE_DIR/data/tiny-neox"
"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/dijiang.h5" --attention dijiang --chunk 4
# Ids below the tiny model's vocabulary of 1000.
printf 'the man is in the end' >"$WORK/prompt.txt"
"$DIJIANG" -q tokenize --text "$WORK/prompt.txt" --out "$WORK/prompt.npy"

tokens() { sed -E 's/.*"tokens":\[([^]]*)\].*/\1/' <<<"$1"; }
for model in "$MODEL" "$WORK/dijiang.h5"; do
  line="$("$DIJIANG" -q generate --model "$model" --prompt "the man is in the end" --max-new-tokens 12 --json)"
  grep -qE '^\{"prompt_tokens":\[[0-9,]+\],"tokens":\[[0-9,]+\],"text":".*","tokens_per_s":[0-9.e+-]+\}$' <<<"$line" \
    || die "$model: bad --json line: $line"
  [ "$(tokens "$line" | tr ',' '\n' | wc -l)" = 12 ] || die "$model: not 12 tokens: $line"
  again="$("$DIJIANG" -q generate --model "$model" --prompt-tokens "$WORK/prompt.npy" --max-new-tokens 12 --json --greedy)"
  [ "$(json_field "$again" tokens)" = "$(json_field "$line" tokens)" ] || die "$model: greedy runs differ"
  [ "$(tokens "$again")" = "$(tokens "$line")" ] || die "$model: greedy from .npy differs from greedy from text"
  a="$("$DIJIANG" -q generate --model "$model" --prompt-tokens "$WORK/prompt.npy" --max-new-tokens 20 --temperature 1.3 --top-k 100 --top-p 0.95 --seed 5 --json)"
  b="$("$DIJIANG" -q generate --model "$model" --prompt-tokens "$WORK/prompt.npy" --max-new-tokens 20 --temperature 1.3 --top-k 100 --top-p 0.95 --seed 5 --json)"
  c="$("$DIJIANG" -q generate --model "$model" --prompt-tokens "$WORK/prompt.npy" --max-new-tokens 20 --temperature 1.3 --top-k 100 --top-p 0.95 --seed 6 --json)"
  [ "$(tokens "$a")" = "$(tokens "$b")" ] || die "$model: a seeded run differs from itself"
  [ "$(tokens "$a")" != "$(tokens "$c")" ] || die "$model: seeds 5 and 6 sampled the same 20 tokens"
  # Streamed text is the text of the tokens.
  streamed="$("$DIJIANG" -q generate --model "$model" --prompt-tokens "$WORK/prompt.npy" --max-new-tokens 12)"
  expected="$("$DIJIANG" -q tokenize --decode --string "$(tokens "$line" | tr ',' ' ')")"
  [ "$streamed" = "$expected" ] || die "$model: streamed '$streamed' differs from '$expected'"
  echo "ok: $model: $(tokens "$line")"
done

# --stop-at-eos: eos_token_id of config.json (0) sampled at a high temperature stops the run early.
stopped=0
for seed in 1 2 3 4 5 6 7 8; do
  line="$("$DIJIANG" -q generate --model "$MODEL" --prompt-tokens "$WORK/prompt.npy" --max-new-tokens 400 --temperature 30 --seed $seed --stop-at-eos --json)"
  last="$(tokens "$line" | tr ',' '\n' | tail -1)"
  count="$(tokens "$line" | tr ',' '\n' | wc -l)"
  if [ "$count" -lt 400 ]; then [ "$last" = 0 ] || die "stopped early without the end-of-text token"; stopped=1; fi
  if grep -qE '(^|,)0,' <<<"$(tokens "$line")"; then die "generation went on after the end-of-text token"; fi
done
[ "$stopped" = 1 ] || die "--stop-at-eos never stopped in 8 runs of 400 tokens"

expect_failure "--greedy excludes --temperature" "$DIJIANG" generate --model "$MODEL" --prompt x --greedy --temperature 2
expect_failure "generate needs --prompt TEXT or --prompt-tokens" "$DIJIANG" generate --model "$MODEL"
expect_failure "--top-p must lie in (0, 1]" "$DIJIANG" generate --model "$MODEL" --prompt-tokens "$WORK/prompt.npy" --top-p 1.5
expect_failure "--temperature must be a positive number" "$DIJIANG" generate --model "$MODEL" --prompt-tokens "$WORK/prompt.npy" --temperature 0
expect_failure "outside the model's vocabulary of 1000: is" "$DIJIANG" generate --model "$MODEL" --prompt "Hello world"
expect_failure "the prompt is empty" "$DIJIANG" generate --model "$MODEL" --prompt ""
head -c 20 "$WORK/prompt.npy" >"$WORK/truncated.npy"
expect_failure "truncated.npy" "$DIJIANG" generate --model "$MODEL" --prompt-tokens "$WORK/truncated.npy"

# bench generate on the tiny config.
"$DIJIANG" -q bench generate --config "$MODEL/config.json" --contexts 8 64 --batches 1 3 --steps 2 --out "$WORK/bench" \
  >"$WORK/bench.txt"
[ "$(grep -c '"model"' "$WORK/bench/generate.json")" = 8 ] || die "generate.json does not hold 8 points"
[ -s "$WORK/bench/generate.png" ] || die "no generate.png"
# Table rows: model batch context ms/step (tokens/s) state-MiB. The KV cache grows with the
# context; DiJiang's state does not, and grows with the batch.
state() { awk -v m="$1" -v b="$2" -v c="$3" '$1 == m && $2 == b && $3 == c { print $NF }' "$WORK/bench.txt"; }
awk -v a="$(state softmax 1 8)" -v b="$(state softmax 1 64)" 'BEGIN { exit !(b > a) }' || die "the KV cache did not grow"
[ "$(state DiJiang 1 8)" = "$(state DiJiang 1 64)" ] || die "DiJiang's state grew with the context"
awk -v a="$(state DiJiang 1 8)" -v b="$(state DiJiang 3 8)" 'BEGIN { exit !(b > 2.5 * a) }' || die "DiJiang's state did not grow with the batch"
grep -q "DiJiang / softmax tokens/s at 64" "$WORK/bench.txt" || die "no ratio line"
echo "ok: bench generate"
