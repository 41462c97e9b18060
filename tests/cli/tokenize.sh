# dijiang tokenize (encode, .npy output, decode) and dijiang eval --text with the shipped GPT-NeoX tokenizer.
source "$(dirname "$0")/lib.bash"
MODEL="$FIXTURES/neox_parallel/f32"

ids="$("$DIJIANG" -q tokenize --string "Hello, I am")"
[ "$ids" = "12092 13 309 717" ] || die "tokenize --string printed '$ids'"
text="$("$DIJIANG" -q tokenize --decode --string "12092 13 309 717")"
[ "$text" = "Hello, I am" ] || die "tokenize --decode printed '$text'"
[ -z "$("$DIJIANG" -q tokenize --string "")" ] || die "the empty string has tokens"

# Every id of this text is below the tiny model's vocab_size 1000.
printf 'the man is in the end and he has a man. it is on the end, but we do not see it. the man was on and the man was in.\n' \
  >"$WORK/small.txt"
"$DIJIANG" -q tokenize --text "$WORK/small.txt" --out "$WORK/small.npy"
[ "$(head -c 6 "$WORK/small.npy" | tail -c 5)" = "NUMPY" ] || die "--out did not write a .npy file"
[ "$("$DIJIANG" -q tokenize --decode --text "$WORK/small.npy")" = "$(cat "$WORK/small.txt")" ] \
  || die "decoding the .npy does not give the text back"
from_tokens="$("$DIJIANG" -q eval --model "$MODEL" --tokens "$WORK/small.npy" --seq-len 8 --json)"
from_text="$("$DIJIANG" -q eval --model "$MODEL" --text "$WORK/small.txt" --seq-len 8 --json)"
[ "$(json_field "$from_text" tokens)" = 31 ] || die "eval --text predicted $(json_field "$from_text" tokens) tokens, not 31"
[ "$from_text" = "$from_tokens" ] || die "eval --text ($from_text) differs from eval --tokens ($from_tokens)"
echo "ok: eval --text $from_text"

# A tokenizer.json beside the model is preferred over the shipped one.
mkdir -p "$WORK/model"
cp "$MODEL"/* "$WORK/model/"
printf '{"model": {"type": "Unigram"}}' >"$WORK/model/tokenizer.json"
expect_failure "model type \"Unigram\" is not supported" "$DIJIANG" eval --model "$WORK/model" --text "$WORK/small.txt" --seq-len 8

expect_failure "token id 12092 at index 0 is not below the model's vocab_size 1000" \
  "$DIJIANG" eval --model "$MODEL" --text <(printf 'Hello world\n') --seq-len 8
expect_failure "is not valid UTF-8" "$DIJIANG" tokenize --text <(printf 'caf\xe9\n')
expect_failure "tokenize needs --text FILE or --string S" "$DIJIANG" tokenize
expect_failure "not valid JSON" "$DIJIANG" tokenize --tokenizer "$MODEL/model.safetensors" --string x
expect_failure "'x' is not a token id" "$DIJIANG" tokenize --decode --string "1 x"
echo "tokenize: all checks passed"
