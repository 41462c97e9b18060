#!/usr/bin/env bash
# The memory plan (dijiang train --plan) against measured peaks: a 14M-parameter DiJiang model
# trained for 3 steps alone and on 2 ranks at every ZeRO stage; each rank's state bytes must equal
# the plan's and its peak resident memory while training within 12% of the plan's total
# (check_plan). The model is large enough that the state and activations, not the libraries,
# dominate the process's memory. The tolerance covers what the plan does not model: rank 0's
# resident memory grows about 15 MiB more than rank 1's during the steps although both have the
# same heap (malloc in use and mapped alike), i.e. memory outside the allocator (library pages,
# MPI shared memory); it used to hide behind heap pages the loading freed and training reused.
# Usage: memory_plan.sh DIJIANG MPIEXEC CHECK_PLAN SOURCE_DIR
set -euo pipefail
DIJIANG="$1" MPIEXEC="$2" CHECK="$3" SOURCE_DIR="$4"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1
cd "$SOURCE_DIR"
common=(model.source=tests/mpi/plan_model.json data.seq_len=128 batch.micro_batch=1 batch.grad_accum=4
        schedule.steps=3 checkpoint.every=3 logging.every=3)
"$DIJIANG" train configs/micro/tiny-dijiang.yaml "${common[@]}" "checkpoint.dir=$WORK/single" >"$WORK/single.log" 2>&1 ||
  { cat "$WORK/single.log"; exit 1; }
"$CHECK" "$WORK/single/resources.json" 0.12
for stage in 0 1 2 3; do
  "$MPIEXEC" --oversubscribe --allow-run-as-root -np 2 "$DIJIANG" train configs/micro/tiny-dijiang.yaml "${common[@]}" \
    distributed.zero_stage="$stage" "checkpoint.dir=$WORK/zero$stage" >"$WORK/zero$stage.log" 2>&1 ||
    { cat "$WORK/zero$stage.log"; exit 1; }
  echo "ZeRO stage $stage:"
  "$CHECK" "$WORK/zero$stage/resources.json" 0.12
done
# The plan of the same run, printed without training, names every stage.
"$DIJIANG" train configs/micro/tiny-dijiang.yaml "${common[@]}" --plan --ranks 2 >"$WORK/plan.txt"
for stage in 0 1 2 3; do grep -qE "^ +$stage +[0-9]" "$WORK/plan.txt" || { cat "$WORK/plan.txt"; exit 1; }; done
echo "ok: the memory plan holds within 12% alone and on 2 ranks at every ZeRO stage"
