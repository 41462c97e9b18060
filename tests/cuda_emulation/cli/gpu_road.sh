#!/usr/bin/env bash
# The GPU road end to end on emulated GPUs: dijiang_emu is dijiang built with the CUDA variant of
# the emulation, so `train` and `eval` run the CUDA model, its ZeRO state and the NCCL
# communicator on emulated devices, and are held against the CPU's dijiang. One part per call:
#   stages    one rank, ZeRO stages 0-3 in f32 against one CPU process (1e-5), bf16 at stages 0
#             and 3 (1e-2: bf16 activations and products)
#   ranks     2 ranks under mpirun (the emulated NCCL across processes), stages 0-3 against one
#             CPU process (1e-5)
#   backends  checkpoints move between backends: 2 steps on the GPU resumed on the CPU, 2 on the
#             CPU resumed on the GPU, a 2-rank GPU stage-3 checkpoint resumed by one CPU process,
#             each against 4 uninterrupted CPU steps (1e-5)
#   eval      eval on the emulated GPU against the CPU: f32 within 1e-6, bf16 within 1e-2
#   generate  greedy generate on the emulated GPU (KV cache; DiJiang's prefill and recurrent steps)
#             gives the CPU's tokens in f32; bf16 generates as many; a seeded sampled run twice
#   refusals  what the GPU cannot run is refused before anything is allocated: a plan over the
#             device's memory (with the plan table), the parallel DiJiang form, --device cuda
#             without a device (the CPU build)
# Usage: gpu_road.sh PART DIJIANG_EMU DIJIANG MPIEXEC COMPARE_RUNS SOURCE_DIR
set -euo pipefail
PART="$1" EMU="$2" CPU="$3" MPIEXEC="$4" COMPARE="$5" SOURCE_DIR="$6"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1 HWLOC_COMPONENTS=-gl
cd "$SOURCE_DIR"
fail() { echo "FAIL: $*"; exit 1; }

common=(data.seq_len=32 batch.micro_batch=2 batch.grad_accum=2 schedule.steps=4 schedule.warmup=1
        checkpoint.every=4 logging.every=4 optimizer.lr=3e-3)
run() {  # NAME BINARY OVERRIDES...
  local name="$1" binary="$2"; shift 2
  "$binary" train configs/micro/tiny-dijiang.yaml "${common[@]}" "checkpoint.dir=$WORK/$name" "$@" \
    >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; fail "$name"; }
}
run_ranks() {  # NAME OVERRIDES...
  local name="$1"; shift
  "$MPIEXEC" --oversubscribe --allow-run-as-root -np 2 "$EMU" train configs/micro/tiny-dijiang.yaml "${common[@]}" \
    "checkpoint.dir=$WORK/$name" "$@" >"$WORK/$name.log" 2>&1 || { cat "$WORK/$name.log"; fail "$name"; }
}

case "$PART" in
  stages)
    run cpu "$CPU"
    for stage in 0 1 2 3; do
      run "gpu$stage" "$EMU" distributed.zero_stage="$stage"
      grep -q "training on CUDA device 0: emulated" "$WORK/gpu$stage.log" || fail "gpu$stage did not train on the GPU"
      "$COMPARE" "$WORK/gpu$stage" "$WORK/cpu" 1e-5
    done
    for stage in 0 3; do
      run "bf16_$stage" "$EMU" distributed.zero_stage="$stage" precision=bf16
      "$COMPARE" "$WORK/bf16_$stage" "$WORK/cpu" 2e-2
    done
    ;;
  ranks)
    run cpu "$CPU"
    for stage in 0 1 2 3; do
      run_ranks "ranks$stage" distributed.zero_stage="$stage"
      grep -q "distributed: 2 ranks (mpi), ZeRO stage $stage" "$WORK/ranks$stage.log" || fail "ranks$stage: no distributed line"
      "$COMPARE" "$WORK/ranks$stage" "$WORK/cpu" 1e-5
    done
    ;;
  backends)
    run cpu "$CPU"
    run gpu_then_cpu "$EMU" --stop-after 2
    run gpu_then_cpu "$CPU" --resume
    "$COMPARE" "$WORK/gpu_then_cpu" "$WORK/cpu" 1e-5
    run cpu_then_gpu "$CPU" --stop-after 2
    run cpu_then_gpu "$EMU" --resume distributed.zero_stage=2
    grep -q "resumed from" "$WORK/cpu_then_gpu.log" || fail "cpu_then_gpu did not resume"
    "$COMPARE" "$WORK/cpu_then_gpu" "$WORK/cpu" 1e-5
    run_ranks ranks_then_cpu distributed.zero_stage=3 --stop-after 2
    [ -f "$WORK/ranks_then_cpu/ckpt-00000002/COMPLETE" ] || fail "no 2-rank checkpoint"
    run ranks_then_cpu "$CPU" --resume
    grep -q "resharded from 2 to 1 ranks" "$WORK/ranks_then_cpu.log" || fail "no resharding line"
    "$COMPARE" "$WORK/ranks_then_cpu" "$WORK/cpu" 1e-5
    ;;
  eval)
    "$CPU" convert --from data/tiny-neox --to "$WORK/dijiang.h5" --attention dijiang --chunk 16 2>/dev/null
    for model in data/tiny-neox "$WORK/dijiang.h5"; do
      cpu=$("$CPU" eval --model "$model" --tokens data/tiny-neox/eval_tokens.npy --seq-len 100 --batch 3 --json)
      gpu=$("$EMU" eval --model "$model" --tokens data/tiny-neox/eval_tokens.npy --seq-len 100 --batch 3 --json 2>"$WORK/eval.log")
      grep -q "evaluating on CUDA device 0" "$WORK/eval.log" || fail "eval did not run on the GPU"
      bf16=$("$EMU" eval --model "$model" --tokens data/tiny-neox/eval_tokens.npy --seq-len 100 --batch 3 --precision bf16 --json)
      loss() { sed -E 's/.*"loss":([^,}]*).*/\1/' <<<"$1"; }
      awk -v c="$(loss "$cpu")" -v g="$(loss "$gpu")" -v b="$(loss "$bf16")" -v m="$model" 'BEGIN {
        e = (g - c) / c; e = e < 0 ? -e : e; f = (b - c) / c; f = f < 0 ? -f : f;
        printf "%s: CPU %.9f, GPU f32 %.9f (%.1e), GPU bf16 %.6f (%.1e)\n", m, c, g, e, b, f;
        exit !(e <= 1e-6 && f <= 1e-2) }' || fail "eval losses differ"
    done
    ;;
  generate)
    "$CPU" convert --from data/tiny-neox --to "$WORK/dijiang.h5" --attention dijiang --chunk 16 2>/dev/null
    "$CPU" tokenize --string 'a;b;c;d;e' --out "$WORK/prompt.npy"
    tokens() { sed -E 's/.*"tokens":\[([^]]*)\].*/\1/' <<<"$1"; }
    for model in data/tiny-neox "$WORK/dijiang.h5"; do
      args=(generate --model "$model" --prompt-tokens "$WORK/prompt.npy" --max-new-tokens 40 --json)
      cpu=$("$CPU" "${args[@]}")
      gpu=$("$EMU" "${args[@]}" 2>"$WORK/generate.log")
      grep -q "generating on CUDA device 0" "$WORK/generate.log" || fail "generate did not run on the GPU"
      [ "$(tokens "$cpu")" = "$(tokens "$gpu")" ] || fail "$model: GPU f32 tokens $(tokens "$gpu") differ from the CPU's $(tokens "$cpu")"
      bf16=$("$EMU" "${args[@]}" --precision bf16)
      [ "$(tokens "$bf16" | tr ',' '\n' | wc -l)" = 40 ] || fail "$model: bf16 did not generate 40 tokens"
      a=$("$EMU" "${args[@]}" --temperature 0.9 --top-k 50 --top-p 0.95 --seed 7)
      b=$("$EMU" "${args[@]}" --temperature 0.9 --top-k 50 --top-p 0.95 --seed 7)
      [ "$(tokens "$a")" = "$(tokens "$b")" ] || fail "$model: a seeded sampled run differs from itself"
      echo "$model: f32 tokens equal the CPU's; bf16 agrees on $(paste -d' ' <(tokens "$cpu" | tr ',' '\n') \
        <(tokens "$bf16" | tr ',' '\n') | awk '$1 == $2' | wc -l) of 40"
    done
    ;;
  refusals)
    if DIJIANG_EMU_MEMORY_GB=0.001 "$EMU" train configs/micro/tiny-dijiang.yaml "${common[@]}" \
         "checkpoint.dir=$WORK/small" >"$WORK/small.log" 2>&1; then fail "a plan over the device's memory trained"; fi
    grep -q "ZeRO stage 0 needs about" "$WORK/small.log" || { cat "$WORK/small.log"; fail "no plan in the refusal"; }
    grep -qE "^ +3 +[0-9]" "$WORK/small.log" || fail "the refusal has no plan table"
    [ -z "$(ls "$WORK/small" 2>/dev/null | grep ckpt)" ] || fail "a refused run wrote a checkpoint"
    if "$EMU" train configs/micro/tiny-dijiang.yaml "${common[@]}" model.dijiang.form=parallel \
         "checkpoint.dir=$WORK/parallel" >"$WORK/parallel.log" 2>&1; then fail "the parallel form trained on the GPU"; fi
    grep -q "form of DiJiang attention runs on the CPU only" "$WORK/parallel.log" || { cat "$WORK/parallel.log"; fail "no form message"; }
    "$EMU" --device cpu train configs/micro/tiny-dijiang.yaml "${common[@]}" model.dijiang.form=parallel \
      "checkpoint.dir=$WORK/parallel_cpu" >"$WORK/parallel_cpu.log" 2>&1 || { cat "$WORK/parallel_cpu.log"; fail "--device cpu"; }
    if "$CPU" --device cuda train configs/micro/tiny-dijiang.yaml "${common[@]}" "checkpoint.dir=$WORK/nodevice" \
         >"$WORK/nodevice.log" 2>&1; then fail "--device cuda ran without a device"; fi
    grep -q "dijiang: error: --device cuda: no usable CUDA device" "$WORK/nodevice.log" || { cat "$WORK/nodevice.log"; fail "no device message"; }
    ;;
  *) fail "unknown part $PART" ;;
esac
echo "ok: $PART"
