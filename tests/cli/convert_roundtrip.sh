# HF (pytorch_model.bin) -> native HDF5 (file and sharded directory) -> exported safetensors:
# the evaluation loss is identical at every stage, and inspect reports the model.
source "$(dirname "$0")/lib.bash"
MODEL="$FIXTURES/neox_parallel/bin"
TOKENS="$FIXTURES/neox_parallel/eval_tokens.npy"
loss() { "$DIJIANG" -q eval --model "$1" --tokens "${2:-$TOKENS}" --seq-len 64 --batch 3 --json; }

hf=$(loss "$MODEL")
[ "$(json_field "$hf" tokens)" = 984 ] || die "predicted tokens: $hf"

"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/model.h5"
native=$(loss "$WORK/model.h5")
[ "$(json_field "$native" loss)" = "$(json_field "$hf" loss)" ] || die "native $native vs hf $hf"

"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/sharded" --shards 3
[ -f "$WORK/sharded/COMPLETE" ] || die "no completion marker"
sharded=$(loss "$WORK/sharded")
[ "$(json_field "$sharded" loss)" = "$(json_field "$hf" loss)" ] || die "sharded $sharded vs hf $hf"

"$DIJIANG" -q export --from "$WORK/model.h5" --to "$WORK/exported" --format hf
for f in model.safetensors config.json tokenizer.json; do [ -f "$WORK/exported/$f" ] || die "export lacks $f"; done
exported=$(loss "$WORK/exported")
[ "$(json_field "$exported" loss)" = "$(json_field "$hf" loss)" ] || die "exported $exported vs hf $hf"

# The same tokens as i32 and i64 arrays give the same result.
for kind in i32 i64; do
  other=$(loss "$MODEL" "$FIXTURES/neox_parallel/eval_tokens_$kind.npy")
  [ "$other" = "$hf" ] || die "$kind tokens: $other vs $hf"
done

info=$("$DIJIANG" -q inspect --model "$WORK/model.h5" --json)
grep -q '"format":"native"' <<<"$info" || die "inspect: $info"
grep -q '"parameters":' <<<"$info" || die "inspect: $info"
"$DIJIANG" -q inspect --model "$MODEL" | grep -q "parameters" || die "inspect text output"

# fp16 export and an f64 evaluation stay close to the f32 loss.
"$DIJIANG" -q export --from "$WORK/model.h5" --to "$WORK/exported16" --format hf --dtype f16
half=$(loss "$WORK/exported16")
awk -v a="$(json_field "$half" loss)" -v b="$(json_field "$hf" loss)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-2) }' \
  || die "f16 export loss $half vs $hf"
double=$("$DIJIANG" -q eval --model "$MODEL" --tokens "$TOKENS" --seq-len 64 --precision f64 --json)
awk -v a="$(json_field "$double" loss)" -v b="$(json_field "$hf" loss)" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d < 1e-5 * b) }' \
  || die "f64 loss $double vs f32 $hf"

# bench make-model: a random model of a config, written one tensor at a time, that every command
# reads; the same seed gives the same bytes, another seed other weights.
"$DIJIANG" -q bench make-model --config "$MODEL/config.json" --to "$WORK/random" --seed 5
"$DIJIANG" -q bench make-model --config "$MODEL/config.json" --to "$WORK/random-again" --seed 5 --dtype bf16
"$DIJIANG" -q bench make-model --config "$MODEL/config.json" --to "$WORK/random-other" --seed 6
"$DIJIANG" -q convert --from "$WORK/random" --to "$WORK/random-rounded.h5" --dtype bf16
[ "$(loss "$WORK/random-again")" = "$(loss "$WORK/random-rounded.h5")" ] ||
  die "make-model --dtype bf16 differs from rounding the f32 model"
! cmp -s "$WORK/random/model.safetensors" "$WORK/random-other/model.safetensors" || die "seeds 5 and 6 gave the same model"
random=$(loss "$WORK/random")
[ "$(json_field "$random" tokens)" = 984 ] || die "random model: $random"
status=0
"$DIJIANG" -q bench make-model --config "$MODEL/config.json" --to "$WORK/random" 2>"$WORK/err" || status=$?
[ "$status" -eq 1 ] && grep -q "pass --force" "$WORK/err" || die "make-model replaced a directory without --force"
echo "convert/export round trip: loss $(json_field "$hf" loss) at every stage"
