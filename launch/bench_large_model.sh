#!/usr/bin/env bash
# Models larger than memory: time and peak resident memory of each step of a conversion job,
# beside the model's size.
#
#   launch/bench_large_model.sh [CONFIG.json] [WORKDIR]
#
# CONFIG (default configs/models/pythia-1b.json: 1.01 B parameters, 4.05 GB in f32) gets random
# weights (`dijiang bench make-model`, written one tensor at a time) as a Hugging Face directory
# in WORKDIR (default /tmp/dijiang-large; about 3.5 times the model's f32 size on disk). Then:
# convert to a native checkpoint (f32), convert to DiJiang attention (bf16, 4 shards), export the
# native checkpoint to a Hugging Face directory (bf16) and the DiJiang one in the reference layout
# (f32). Each step's peak RSS is what dijiang reports of itself (VmHWM), its time the wall clock.
# The baseline is the RSS of a process that only starts (`dijiang --version`: the linked
# libraries), so that the table also shows the memory each step adds.
#
# With TRAIN_CONFIG set (e.g. configs/models/pythia-410m.json), a model of that config is also
# made, converted, and loaded for training by 4 ranks at ZeRO stage 3 (one step of 4 sequences of
# 16 tokens); the table then gives every rank's peak RSS (from the run's resources.json).
# Set DIJIANG to a built binary to skip the set-up (packages and build) that runs otherwise.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
config="${1:-configs/models/pythia-1b.json}"
work="${2:-/tmp/dijiang-large}"
[ -r "$config" ] || { echo "launch/bench_large_model.sh: cannot read $config" >&2; exit 2; }
if [ -z "${DIJIANG:-}" ]; then
  source launch/setup.sh
fi
mkdir -p "$work"
rows=()

# run NAME OUTPUT COMMAND...: runs a dijiang command, records its time, peak RSS and output size.
run() {
  local name="$1" output="$2"; shift 2
  local log="$work/$name.log" start end
  start=$(date +%s.%N)
  "$DIJIANG" "$@" 2>&1 | tee "$log"
  end=$(date +%s.%N)
  local rss size
  rss=$(sed -n 's/.*peak RSS \([0-9.]*\) MB.*/\1/p' "$log" | tail -1)
  size=$(du -sb "$output" | awk '{ printf "%.2f", $1 / 1e9 }')
  rows+=("$(printf '| %-28s | %8.1f | %13s | %11s |' "$name" "$(awk "BEGIN { print $end - $start }")" \
    "${rss:-?}" "$size")")
}

baseline="?"
[ ! -x /usr/bin/time ] || baseline=$(/usr/bin/time -f %M "$DIJIANG" --version 2>&1 >/dev/null | tail -1)
run make-model "$work/hf" bench make-model --config "$config" --to "$work/hf" --force
model_line=$(grep 'wrote' "$work/make-model.log" | tail -1)
run "convert f32" "$work/native.h5" convert --from "$work/hf" --to "$work/native.h5"
run "convert dijiang bf16 x4" "$work/dijiang" convert --from "$work/native.h5" --to "$work/dijiang" \
  --attention dijiang --dtype bf16 --shards 4
rm -rf "$work/export" "$work/export-dijiang"
run "export hf bf16" "$work/export" export --format hf --from "$work/native.h5" --to "$work/export" --dtype bf16
run "export dijiang (reference)" "$work/export-dijiang" export --format hf --from "$work/dijiang" \
  --to "$work/export-dijiang"

if [ -n "${TRAIN_CONFIG:-}" ]; then
  "$DIJIANG" bench make-model --config "$TRAIN_CONFIG" --to "$work/train-hf" --force
  "$DIJIANG" convert --from "$work/train-hf" --to "$work/train.h5"
  rm -rf "$work/train-run"
  DIJIANG="$DIJIANG" launch/mpirun.sh -n 4 configs/micro/tiny-dijiang.yaml \
    model.source="$work/train.h5" checkpoint.dir="$work/train-run" distributed.zero_stage=3 \
    schedule.steps=1 schedule.warmup=0 data.seq_len=16 batch.micro_batch=1 batch.grad_accum=1 \
    data.valid= checkpoint.every=1000 2>&1 | tee "$work/train.log"
fi

echo
echo "model: ${model_line#*info }"
echo "baseline (dijiang --version): ${baseline:-?} KB"
echo
echo "| step                         | time (s) | peak RSS (MB) | output (GB) |"
echo "|------------------------------|----------|---------------|-------------|"
printf '%s\n' "${rows[@]}"
if [ -n "${TRAIN_CONFIG:-}" ]; then
  echo
  echo "4-rank ZeRO stage-3 training start of $TRAIN_CONFIG (MiB):"
  sed -n '/resources per rank/,/^\S*$/p' "$work/train.log" | sed 's/^.*info //' | head -6
fi
