#!/usr/bin/env bash
# Resharding: a 4-rank ZeRO-3 run stopped at step 5 resumes on 2 ranks (stage 1) and on 1 rank
# (stage 0) and ends where the uninterrupted 4-rank run ends: the same losses at every step and
# the same final weights. The merged checkpoint (dijiang convert) resumes too.
# Usage: reshard.sh DIJIANG MPIEXEC COMPARE_RUNS SOURCE_DIR
set -euo pipefail
DIJIANG="$1" MPIEXEC="$2" COMPARE="$3" SOURCE_DIR="$4"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"
TOLERANCE=1e-6
common=(data.seq_len=32 schedule.steps=10 schedule.warmup=2 checkpoint.every=5 checkpoint.keep=5
        logging.every=5 optimizer.lr=3e-3 batch.micro_batch=2 batch.grad_accum=6)
train() {  # NP DIR LOG ARGS...
  local np="$1" dir="$2" log="$3"; shift 3
  local launch=()
  [ "$np" -gt 0 ] && launch=("$MPIEXEC" --oversubscribe --allow-run-as-root -np "$np")
  "${launch[@]}" "$DIJIANG" train configs/micro/tiny-dijiang.yaml "${common[@]}" "checkpoint.dir=$dir" "$@" \
    >"$WORK/$log.log" 2>&1 || { cat "$WORK/$log.log"; exit 1; }
}

train 4 "$WORK/straight" straight distributed.zero_stage=3
train 4 "$WORK/stopped" stopped distributed.zero_stage=3 --stop-after 5
[ -d "$WORK/stopped/ckpt-00000005" ] || { echo "FAIL: no 4-rank checkpoint at step 5"; exit 1; }
[ ! -e "$WORK/stopped/ckpt-00000010" ] || { echo "FAIL: --stop-after 5 ran on"; exit 1; }
cp -r "$WORK/stopped" "$WORK/on2"
cp -r "$WORK/stopped" "$WORK/on1"
train 2 "$WORK/on2" on2 distributed.zero_stage=1 --resume
grep -q "resharded from 4 to 2 ranks" "$WORK/on2.log" || { cat "$WORK/on2.log"; echo "FAIL: no reshard note"; exit 1; }
"$COMPARE" "$WORK/on2" "$WORK/straight" "$TOLERANCE"
train 0 "$WORK/on1" on1 --resume
grep -q "resharded from 4 to 1 ranks" "$WORK/on1.log" || { cat "$WORK/on1.log"; echo "FAIL: no reshard note"; exit 1; }
"$COMPARE" "$WORK/on1" "$WORK/straight" "$TOLERANCE"

# Merge the 4-rank checkpoint into one file and resume from that on 3 ranks.
mkdir "$WORK/merged"
cp "$WORK/stopped/metrics.jsonl" "$WORK/merged/"
"$DIJIANG" convert --from "$WORK/stopped/ckpt-00000005" --to "$WORK/merged/ckpt-00000005.h5" >"$WORK/merge.log" 2>&1 \
  || { cat "$WORK/merge.log"; exit 1; }
train 3 "$WORK/merged" merged distributed.zero_stage=2 --resume
"$COMPARE" "$WORK/merged" "$WORK/straight" "$TOLERANCE"
echo "ok: a 4-rank checkpoint resumes on 3, 2 and 1 ranks"
