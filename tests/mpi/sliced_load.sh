#!/usr/bin/env bash
# Sliced loading: at ZeRO stage 3 each of 4 ranks reads only the ranges of the source tensors its
# slice holds (the source is opened, not read; resources.json counts each rank's bytes), while at
# stage 0 every rank reads the whole model; both train to the same losses and weights. Sources: a
# native checkpoint, a Hugging Face safetensors directory in f16 (converted to f32 as read) and the
# shipped pytorch_model.bin.
# Usage: sliced_load.sh DIJIANG MPIEXEC COMPARE_RUNS SOURCE_DIR
set -euo pipefail
DIJIANG="$1" MPIEXEC="$2" COMPARE="$3" SOURCE_DIR="$4"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"
fail() { echo "FAIL: $*" >&2; exit 1; }

"$DIJIANG" convert --from data/tiny-neox --to "$WORK/native.h5" 2>/dev/null
"$DIJIANG" export --format hf --from data/tiny-neox --to "$WORK/hf16" --dtype f16 2>/dev/null

# The per-rank source_bytes_read of a run's resources.json, one per line.
bytes_read() { sed -n 's/.*"source_bytes_read": *\([0-9.e+]*\).*/\1/p' "$1/resources.json" | awk '{ printf "%.0f\n", $1 }'; }

ln -s "$SOURCE_DIR/data/tiny-neox" "$WORK/bin"
for source in native.h5 hf16 bin; do
  for stage in 0 3; do
    "$MPIEXEC" --oversubscribe --allow-run-as-root -np 4 "$DIJIANG" train configs/micro/tiny-dijiang.yaml \
      "model.source=$WORK/$source" data.seq_len=32 schedule.steps=4 checkpoint.every=4 logging.every=1 \
      batch.micro_batch=1 batch.grad_accum=1 distributed.zero_stage="$stage" "checkpoint.dir=$WORK/$source-$stage" \
      >"$WORK/$source-$stage.log" 2>&1 || { cat "$WORK/$source-$stage.log"; fail "$source at stage $stage"; }
  done
  "$COMPARE" "$WORK/$source-3" "$WORK/$source-0" 1e-6
  mapfile -t whole < <(bytes_read "$WORK/$source-0")
  mapfile -t sliced < <(bytes_read "$WORK/$source-3")
  [ "${#whole[@]}" -eq 4 ] && [ "${#sliced[@]}" -eq 4 ] || fail "$source: no source_bytes_read for 4 ranks"
  total=${whole[0]}
  [ "$total" -gt 0 ] || fail "$source: stage 0 read nothing"
  for r in 0 1 2 3; do
    [ "${whole[$r]}" -eq "$total" ] || fail "$source: stage 0 rank $r read ${whole[$r]} bytes, rank 0 $total"
    # A quarter of the flat buffer, give or take a row at each end of the slice; DiJiang tensors
    # are made, not read, so a slice may hold less of the file.
    [ "${sliced[$r]}" -le $(( total / 4 + total / 50 )) ] ||
      fail "$source: stage 3 rank $r read ${sliced[$r]} bytes of a $total-byte model (more than its quarter)"
  done
  sum=$(( sliced[0] + sliced[1] + sliced[2] + sliced[3] ))
  [ "$sum" -ge "$total" ] && [ "$sum" -le $(( total + total / 50 )) ] ||
    fail "$source: the stage 3 ranks read $sum bytes together, the model is $total"
  echo "ok: $source: stage 0 reads $total bytes per rank; stage 3 reads ${sliced[*]} (together $sum)"
done
