# Softmax -> DiJiang conversion, evaluation with every form, export in the reference interchange
# layout and import back: the loss survives the round trip to 1e-6.
source "$(dirname "$0")/lib.bash"
MODEL="$FIXTURES/neox_sequential/bin"
TOKENS="$FIXTURES/neox_sequential/eval_tokens.npy"
loss() { "$DIJIANG" -q eval --model "$1" --tokens "$TOKENS" --seq-len 100 --batch 4 --json; }
close() {  # close A B TOLERANCE: |A - B| <= TOLERANCE * |B|
  awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; if (b < 0) b = -b; exit !(d <= t * b) }'
}

"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/dj.h5" --attention dijiang --seed 7 --chunk 16
"$DIJIANG" -q inspect --model "$WORK/dj.h5" | grep -q "attention DiJiang: sampling qmc (seed 7), form chunkwise (chunk 16)" \
  || die "inspect does not report the DiJiang options"
native=$(loss "$WORK/dj.h5")
softmax=$(loss "$MODEL")
[ "$(json_field "$native" tokens)" = "$(json_field "$softmax" tokens)" ] || die "token counts differ"

# The float evaluation (chunkwise form) equals a pure fp64 evaluation with the parallel form.
exact=$("$DIJIANG" -q eval --model "$WORK/dj.h5" --tokens "$TOKENS" --seq-len 100 --batch 4 --precision f64 \
  --dijiang-form parallel --json)
close "$(json_field "$native" loss)" "$(json_field "$exact" loss)" 1e-6 || die "f32 chunkwise $native vs f64 $exact"

# The same conversion with another seed gives another model; the same seed the same one.
"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/dj-again.h5" --attention dijiang --seed 7 --chunk 16
[ "$(loss "$WORK/dj-again.h5")" = "$native" ] || die "conversion is not deterministic for a seed"
"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/dj-other.h5" --attention dijiang --seed 8 --chunk 16
[ "$(loss "$WORK/dj-other.h5")" != "$native" ] || die "the seed does not change the sampled features"

"$DIJIANG" -q export --from "$WORK/dj.h5" --to "$WORK/exported" --format hf
# The safetensors header, read whole first: `head | grep -q` would fail under pipefail whenever
# grep exits before head has written everything (SIGPIPE).
header=$(head -c 20000 "$WORK/exported/model.safetensors" | tr -d '\0')
grep -aq '"gpt_neox.layers.1.attention.D1":{"dtype":"F32","shape":\[1,8,128,1\]' <<<"$header" \
  || die "export lacks the D1 table"
grep -aq '"gpt_neox.layers.0.attention.proj_matrix":{"dtype":"F32","shape":\[8,8\]' <<<"$header" \
  || die "export lacks proj_matrix"
grep -aq 'log_gamma' <<<"$header" && die "export leaks the native log_gamma"
exported=$(loss "$WORK/exported")
close "$(json_field "$exported" loss)" "$(json_field "$native" loss)" 1e-6 || die "export round trip: $exported vs $native"

# A directory made by the reference code carries no extra config field: drop ours and import.
grep -v -e '"attention_kind"' "$WORK/exported/config.json" | sed '/"dijiang": {/,/}/d' >"$WORK/config.json"
cp "$WORK/config.json" "$WORK/exported/config.json"
grep -q dijiang "$WORK/exported/config.json" && die "config still names dijiang"
bare=$(loss "$WORK/exported")
close "$(json_field "$bare" loss)" "$(json_field "$native" loss)" 1e-6 || die "bare import: $bare vs $native"
"$DIJIANG" -q convert --from "$WORK/exported" --to "$WORK/reimported.h5"
reimported=$(loss "$WORK/reimported.h5")
close "$(json_field "$reimported" loss)" "$(json_field "$native" loss)" 1e-6 || die "reimport: $reimported vs $native"

# Options the reference layout cannot hold are refused; misuse of the flags too.
"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/weighted.h5" --attention dijiang --feature-weights
expect_failure "has no learned feature weights" "$DIJIANG" export --from "$WORK/weighted.h5" --to "$WORK/w" --format hf
[ ! -e "$WORK/w" ] || die "a refused export left a directory"
expect_failure "--dijiang-form applies to converted models" \
  "$DIJIANG" eval --model "$MODEL" --tokens "$TOKENS" --seq-len 100 --dijiang-form parallel
expect_failure "--seed requires --attention" "$DIJIANG" convert --from "$MODEL" --to "$WORK/x.h5" --seed 3
expect_failure "already has DiJiang attention" "$DIJIANG" convert --from "$WORK/dj.h5" --to "$WORK/x.h5" --attention dijiang
expect_failure "converting back to softmax attention is not supported" \
  "$DIJIANG" convert --from "$WORK/dj.h5" --to "$WORK/x.h5" --attention softmax
echo "DiJiang conversion and interchange round trip: loss $(json_field "$native" loss)"

# The variants that share DiJiang's kernels: RetNet-style retention (no feature map, no proj_matrix)
# and the Gaussian projection. Each converts, reports itself, evaluates in f32 chunkwise as in f64
# parallel, and the one without a feature map is refused by the reference layout.
"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/retnet.h5" --attention retnet --seed 7 --chunk 16
"$DIJIANG" -q inspect --model "$WORK/retnet.h5" | grep -q "attention RetNet-style (DiJiang without a feature map): seed 7" \
  || die "inspect does not report the RetNet-style model: $("$DIJIANG" -q inspect --model "$WORK/retnet.h5")"
"$DIJIANG" -q inspect --model "$WORK/retnet.h5" --json | grep -q proj_matrix && die "the RetNet-style model holds proj_matrix"
"$DIJIANG" -q convert --from "$MODEL" --to "$WORK/gaussian.h5" --attention dijiang --projection gaussian --seed 7
"$DIJIANG" -q inspect --model "$WORK/gaussian.h5" | grep -q "attention DiJiang with a Gaussian projection (no DCT)" \
  || die "inspect does not report the Gaussian projection"
for variant in retnet gaussian; do
  fast=$(loss "$WORK/$variant.h5")
  exact=$("$DIJIANG" -q eval --model "$WORK/$variant.h5" --tokens "$TOKENS" --seq-len 100 --batch 4 --precision f64 \
    --dijiang-form parallel --json)
  close "$(json_field "$fast" loss)" "$(json_field "$exact" loss)" 1e-6 || die "$variant: f32 chunkwise $fast vs f64 $exact"
  [ "$(json_field "$fast" loss)" != "$(json_field "$native" loss)" ] || die "$variant evaluates as DiJiang does"
done
expect_failure "has a feature map" "$DIJIANG" -q export --from "$WORK/retnet.h5" --to "$WORK/retnet-hf" --format hf
[ ! -e "$WORK/retnet-hf" ] || die "a refused export left $WORK/retnet-hf"
expect_failure "no feature map, but --projection is gaussian" \
  "$DIJIANG" -q convert --from "$MODEL" --to "$WORK/x.h5" --attention retnet --projection gaussian
echo "ok: retnet and gaussian variants convert, evaluate (f32 chunkwise = f64 parallel) and are refused where they must be"

# The normalised linear-attention baselines: each converts (only the performer adds a tensor, its
# fixed projection), reports itself, evaluates in f32 chunkwise as in f64 parallel, and is refused by
# export (no layout outside this program loads it).
softmax_tensors=$(json_field "$("$DIJIANG" -q inspect --model "$MODEL" --json)" tensors)
for baseline in performer cosformer elu; do
  "$DIJIANG" -q convert --from "$MODEL" --to "$WORK/$baseline.h5" --attention "$baseline" --seed 3 --chunk 16
  "$DIJIANG" -q inspect --model "$WORK/$baseline.h5" | grep -q "attention $baseline (normalised linear attention" \
    || die "inspect does not report $baseline: $("$DIJIANG" -q inspect --model "$WORK/$baseline.h5")"
  added=$(( $(json_field "$("$DIJIANG" -q inspect --model "$WORK/$baseline.h5" --json)" tensors) - softmax_tensors ))
  if [ "$baseline" = performer ]; then [ "$added" -eq 2 ] || die "the performer adds $added tensors, not 2 projections"
  else [ "$added" -eq 0 ] || die "$baseline adds $added tensors"; fi
  fast=$(loss "$WORK/$baseline.h5")
  exact=$("$DIJIANG" -q eval --model "$WORK/$baseline.h5" --tokens "$TOKENS" --seq-len 100 --batch 4 --precision f64 \
    --dijiang-form parallel --json)
  close "$(json_field "$fast" loss)" "$(json_field "$exact" loss)" 1e-6 || die "$baseline: f32 chunkwise $fast vs f64 $exact"
  expect_failure "neither Hugging Face nor the reference DiJiang code" \
    "$DIJIANG" -q export --from "$WORK/$baseline.h5" --to "$WORK/$baseline-hf" --format hf
  [ ! -e "$WORK/$baseline-hf" ] || die "a refused export left $WORK/$baseline-hf"
done
expect_failure "takes --seed, --chunk and --form only" \
  "$DIJIANG" -q convert --from "$MODEL" --to "$WORK/x.h5" --attention elu --sampling mc
expect_failure "already has performer attention" \
  "$DIJIANG" -q convert --from "$WORK/performer.h5" --to "$WORK/x.h5" --attention dijiang
echo "ok: the performer, cosformer and elu baselines convert, evaluate (f32 chunkwise = f64 parallel) and are refused by export"
