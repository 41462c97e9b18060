#!/usr/bin/env bash
# Data parallelism is invisible in the numbers: for each ZeRO stage, 10 steps on NP ranks give the
# losses and final weights of the single-process run with the same global batch (12 sequences;
# with 4 ranks also 10 sequences, slices of 2 and 3 with padding passes). Stages 0 and 3 also run
# an attention-transfer stage before the fine-tuning. The tiny DiJiang model has 237,064
# parameters, which 3 does not divide (slices of 79,021 and 79,022).
# Usage: train_ranks.sh DIJIANG MPIEXEC COMPARE_RUNS SOURCE_DIR NP
set -euo pipefail
DIJIANG="$1" MPIEXEC="$2" COMPARE="$3" SOURCE_DIR="$4" NP="$5"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"
TOLERANCE=1e-6

common=(data.seq_len=32 schedule.steps=10 schedule.warmup=2 checkpoint.every=10 logging.every=10
        optimizer.lr=3e-3)
run_single() {  # NAME OVERRIDES...
  local name="$1"; shift
  "$DIJIANG" train configs/micro/tiny-dijiang.yaml "${common[@]}" "checkpoint.dir=$WORK/$name" "$@" \
    >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; exit 1; }
}
run_ranks() {  # NAME OVERRIDES...
  local name="$1"; shift
  "$MPIEXEC" --oversubscribe --allow-run-as-root -np "$NP" \
    "$DIJIANG" train configs/micro/tiny-dijiang.yaml "${common[@]}" "checkpoint.dir=$WORK/$name" "$@" \
    >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; exit 1; }
}

run_single single batch.micro_batch=2 batch.grad_accum=6
for stage in 0 1 2 3; do
  run_ranks "np$NP-zero$stage" batch.micro_batch=2 batch.grad_accum=6 distributed.zero_stage="$stage"
  "$COMPARE" "$WORK/np$NP-zero$stage" "$WORK/single" "$TOLERANCE"
done
if [ "$NP" -gt 1 ]; then
  # Several ranks write one file each; rank 0 alone logs and writes metrics.
  ls "$WORK/np$NP-zero3/ckpt-00000010" | grep -q "rank-00000-of-0000$NP.h5" || { echo "FAIL: no per-rank checkpoint"; exit 1; }
  [ -f "$WORK/np$NP-zero3/ckpt-00000010/COMPLETE" ] || { echo "FAIL: no COMPLETE marker"; exit 1; }
  if grep -q "\[rank [1-9]\]" "$WORK/np$NP-zero3.log"; then echo "FAIL: ranks other than 0 logged"; exit 1; fi
  grep -q "distributed: $NP ranks (mpi), ZeRO stage 3" "$WORK/np$NP-zero3.log" || { echo "FAIL: no distributed line"; exit 1; }
fi
if [ "$NP" -eq 4 ]; then
  run_single single10 batch.micro_batch=1 batch.grad_accum=10
  for stage in 0 3; do
    run_ranks "uneven-zero$stage" batch.micro_batch=1 batch.grad_accum=10 distributed.zero_stage="$stage"
    grep -q "some ranks run padding passes" "$WORK/uneven-zero$stage.log" || { echo "FAIL: no padding warning"; exit 1; }
    "$COMPARE" "$WORK/uneven-zero$stage" "$WORK/single10" "$TOLERANCE"
  done
fi
# Two stages (attention transfer, then the language model): the transfer's layer-by-layer pass
# acquires parameters and gradients in another order than a training step.
staged=(configs/micro/tiny-dijiang-transfer.yaml data.seq_len=32 stages.0.steps=5 stages.1.steps=5
        checkpoint.every=10 logging.every=10 batch.micro_batch=2 batch.grad_accum=6)
"$DIJIANG" train "${staged[@]}" "checkpoint.dir=$WORK/staged-single" >"$WORK/staged-single.log" 2>&1 \
  || { cat "$WORK/staged-single.log"; exit 1; }
for stage in 0 3; do
  "$MPIEXEC" --oversubscribe --allow-run-as-root -np "$NP" "$DIJIANG" train "${staged[@]}" \
    "checkpoint.dir=$WORK/staged-zero$stage" distributed.zero_stage="$stage" >"$WORK/staged-zero$stage.log" 2>&1 \
    || { cat "$WORK/staged-zero$stage.log"; exit 1; }
  "$COMPARE" "$WORK/staged-zero$stage" "$WORK/staged-single" "$TOLERANCE"
done
echo "ok: $NP ranks, ZeRO stages 0-3 match one process, with and without an attention-transfer stage"
