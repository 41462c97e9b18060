#!/usr/bin/env bash
# The main job on its embedded default, on the CPU in about 10 minutes:
#  1. checkpoint formats: the shipped tiny GPT-NeoX (a Hugging Face pytorch_model.bin) is
#     evaluated, converted to native HDF5 and exported back; the losses are identical;
#  2. the DiJiang conversion run: the shipped corpus (Vim documentation, data/corpus) is tokenized
#     with the GPT-NeoX tokenizer, a small softmax GPT-NeoX teacher is trained on it from scratch,
#     converted to DiJiang attention and fine-tuned on 1/16 of the teacher's training tokens; the
#     validation perplexity of teacher, converted-before-fine-tuning and converted-after-fine-tuning
#     is printed as a table and plotted (runs/demo/curves.png), with their zero-shot scores on the
#     tasks made from the held-out chapters (data/tasks).
# Output goes to runs/demo. Pass a different directory as the first argument.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$DIJIANG_ROOT"

OUT="${1:-runs/demo}"
mkdir -p "$OUT"
field() { sed -E "s/.*\"$2\":([^,}]*).*/\1/" <<<"$1"; }
started=$(date +%s)

echo "== 1. checkpoint formats (data/tiny-neox)"
TINY=data/tiny-neox
tiny_loss() { "$DIJIANG" -q eval --model "$1" --tokens "$TINY/eval_tokens.npy" --seq-len 64 --json; }
hf=$(tiny_loss "$TINY")
"$DIJIANG" -q convert --from "$TINY" --to "$OUT/tiny-neox.h5"
native=$(tiny_loss "$OUT/tiny-neox.h5")
"$DIJIANG" -q export --from "$OUT/tiny-neox.h5" --to "$OUT/tiny-neox-hf" --format hf --force
exported=$(tiny_loss "$OUT/tiny-neox-hf")
printf '%-40s %14s\n' "tiny model as" "loss"
for row in "Hugging Face pytorch_model.bin|$hf" "native HDF5 (convert)|$native" "safetensors (export)|$exported"; do
  printf '%-40s %14.8f\n' "${row%%|*}" "$(field "${row#*|}" loss)"
done
if [ "$(field "$hf" loss)" != "$(field "$native" loss)" ] || [ "$(field "$hf" loss)" != "$(field "$exported" loss)" ]; then
  echo "losses differ across formats" >&2
  exit 1
fi

echo "== 2. DiJiang conversion run"
CORPUS=data/corpus/vim-doc
"$DIJIANG" -q preprocess --format text --output-prefix "$OUT/corpus-train" \
  --input $(ls "$CORPUS"/*.txt | grep -v '/usr_4[0-9]\.txt$')
"$DIJIANG" -q preprocess --format text --output-prefix "$OUT/corpus-valid" --input "$CORPUS"/usr_4[0-9].txt
data=(data.train="$OUT/corpus-train" data.valid="$OUT/corpus-valid")

"$DIJIANG" train configs/demo/teacher.yaml "${data[@]}" checkpoint.dir="$OUT/teacher"
teacher="$OUT/teacher/ckpt-00000400.h5"
"$DIJIANG" -q convert --from "$teacher" --to "$OUT/converted.h5" --attention dijiang --seed 0
"$DIJIANG" train configs/demo/dijiang.yaml "${data[@]}" model.source="$teacher" checkpoint.dir="$OUT/dijiang"
finetuned="$OUT/dijiang/ckpt-00000025.h5"

valid_loss() { "$DIJIANG" -q eval --model "$1" --tokens "$OUT/corpus-valid" --seq-len 128 --batch 8 --json; }
t=$(valid_loss "$teacher")
c=$(valid_loss "$OUT/converted.h5")
f=$(valid_loss "$finetuned")
"$DIJIANG" -q plot --out "$OUT/curves.png" --title "Demo: teacher (400 steps) and DiJiang fine-tuning (25 steps)" \
  --run "softmax teacher=$OUT/teacher" --run "DiJiang fine-tuning=$OUT/dijiang"

echo
printf '%-44s %10s %12s %12s\n' "validation (held-out usr_4*.txt)" tokens loss perplexity
for row in "softmax teacher (from scratch, 400 steps)|$t" "DiJiang, converted, before fine-tuning|$c" \
           "DiJiang, after fine-tuning (25 steps, 1/16)|$f"; do
  json="${row#*|}"
  printf '%-44s %10s %12.4f %12.2f\n' "${row%%|*}" "$(field "$json" tokens)" "$(field "$json" loss)" "$(field "$json" ppl)"
done

# Zero-shot scores on tasks made from the same held-out chapters (data/tasks, tools/tasks/README.md).
tasks() { "$DIJIANG" -q eval-tasks --model "$1" --task "$2=data/tasks/vimdoc-$2.jsonl" --json; }
echo
printf '%-44s %16s %16s %12s\n' "zero-shot (data/tasks, usr_4*.txt)" "choice acc_norm" "cloze acc" "cloze ppl"
for row in "softmax teacher|$teacher" "DiJiang, converted, before fine-tuning|$OUT/converted.h5" \
           "DiJiang, after fine-tuning|$finetuned"; do
  choice=$(tasks "${row#*|}" choice)
  cloze=$(tasks "${row#*|}" cloze)
  printf '%-44s %16.3f %16.3f %12.2f\n' "${row%%|*}" "$(field "$choice" acc_norm)" "$(field "$cloze" acc)" \
    "$(field "$cloze" perplexity)"
done
echo
echo "curves: $OUT/curves.png; checkpoints and metrics.jsonl under $OUT/teacher and $OUT/dijiang"
echo "wall time: $(( $(date +%s) - started )) s"
