#!/usr/bin/env bash
# The main job on its embedded default: load the shipped tiny GPT-NeoX checkpoint (a Hugging Face
# pytorch_model.bin), evaluate it, convert it to a native HDF5 checkpoint, evaluate that, export it
# back to a Hugging Face directory and evaluate once more (the three losses agree exactly); then
# convert it to DiJiang attention, evaluate, export in the reference code's interchange layout and
# evaluate the re-imported model (the two DiJiang losses agree to 1e-6).
# Output goes to runs/demo (or the directory given as the first argument).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"

OUT="${1:-$DIJIANG_ROOT/runs/demo}"
MODEL="$DIJIANG_ROOT/data/tiny-neox"
TOKENS="$MODEL/eval_tokens.npy"
mkdir -p "$OUT"

echo "== inspect the shipped checkpoint"
"$DIJIANG" inspect --model "$MODEL"

loss_of() { "$DIJIANG" -q eval --model "$1" --tokens "$TOKENS" --seq-len 64 --json; }

echo "== evaluate, convert, evaluate, export, evaluate"
hf=$(loss_of "$MODEL")
"$DIJIANG" convert --from "$MODEL" --to "$OUT/tiny-neox.h5"
native=$(loss_of "$OUT/tiny-neox.h5")
"$DIJIANG" export --from "$OUT/tiny-neox.h5" --to "$OUT/tiny-neox-hf" --format hf --force
exported=$(loss_of "$OUT/tiny-neox-hf")
"$DIJIANG" convert --from "$MODEL" --to "$OUT/tiny-dijiang.h5" --attention dijiang --seed 0
dijiang=$(loss_of "$OUT/tiny-dijiang.h5")
"$DIJIANG" export --from "$OUT/tiny-dijiang.h5" --to "$OUT/tiny-dijiang-hf" --format hf --force
dijiang_exported=$(loss_of "$OUT/tiny-dijiang-hf")

field() { sed -E "s/.*\"$2\":([^,}]*).*/\1/" <<<"$1"; }
printf '%-40s %7s %14s %12s\n' model tokens loss perplexity
for row in "Hugging Face pytorch_model.bin|$hf" "native HDF5 (dijiang convert)|$native" \
           "exported safetensors (dijiang export)|$exported" \
           "DiJiang, converted (no fine-tuning yet)|$dijiang" "DiJiang, interchange export re-imported|$dijiang_exported"; do
  name="${row%%|*}" json="${row#*|}"
  printf '%-40s %7s %14.8f %12.4f\n' "$name" "$(field "$json" tokens)" "$(field "$json" loss)" "$(field "$json" ppl)"
done
if [ "$(field "$hf" loss)" != "$(field "$native" loss)" ] || [ "$(field "$hf" loss)" != "$(field "$exported" loss)" ]; then
  echo "softmax losses differ across formats" >&2
  exit 1
fi
echo "softmax model: losses identical across the three formats"
awk -v a="$(field "$dijiang" loss)" -v b="$(field "$dijiang_exported" loss)" \
  'BEGIN { d = (a - b) / b; if (d < 0) d = -d; printf "DiJiang model: interchange round trip changes the loss by %.1e (relative)\n", d; exit !(d <= 1e-6) }'
echo "outputs in $OUT"
