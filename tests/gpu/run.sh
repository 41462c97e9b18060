#!/usr/bin/env bash
# The device checks, for a GPU machine (an H200 by default): configures and builds the standalone
# project tests/gpu with nvcc, then runs each check. From the repository root, after
# tests/gpu/prepare.sh has filled build-gpu-deps/ (carried along with the tree):
#
#   bash tests/gpu/run.sh
#
# Steps, in order of what matters most when time runs short: environment, configure, build
# (nccl_check, train_check, kernel_check in one build), nccl_check (the NCCL communicator),
# train_check (the trainer's ZeRO state on the GPU, stages 0-3 through NCCL, against the CPU; two
# ranks when two GPUs are visible, skipped otherwise), kernel_check (every CUDA op against the
# CPU reference, every Pythia head size), sanitizer (compute-sanitizer racecheck, synccheck and
# memcheck over the attention kernels' checks), kernel_bench (kernel_check --bench-only).
# DIJIANG_CUDA_SYNC_LAUNCHES=1 is set for the checks (not the benchmarks): every launch is followed
# by a synchronisation, so a fault names its kernel. Logs go to $OUT (default build-gpu-out/):
# setup.log (environment, configure, build), nccl_check.log, train_check.log, kernel_check.log,
# sanitizer.log, kernel_bench.log and the summary, summary.txt, printed last: 7 files, under the
# device's limit of 8. A step whose prerequisite failed is skipped. Exit status 0 only when every
# step passed. Each step has a budget, and the whole script a deadline (DIJIANG_GPU_DEADLINE_S,
# default 465 s) that caps the budget of every step, so that it ends well inside the device's
# per-command limit (10 minutes) whatever the builds take.
#
# Environment: DIJIANG_GPU_ARCH (CUDA architectures, default 90), DIJIANG_GPU_BUILD (build folder,
# default build-gpu/, kept between calls while the machine stays warm), NCCL_ROOT,
# DIJIANG_GPU_DEADLINE_S, KERNEL_CHECK_ARGS (extra arguments of the kernel_check runs, e.g.
# "--seed 42" or "--filter layernorm").
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$root" || exit 2
OUT=${OUT:-$root/build-gpu-out}
mkdir -p "$OUT"
build=${DIJIANG_GPU_BUILD:-$root/build-gpu}
arch=${DIJIANG_GPU_ARCH:-90}
deps="$root/build-gpu-deps/include"
jobs=$(nproc 2>/dev/null || echo 4)
deadline=$((SECONDS + ${DIJIANG_GPU_DEADLINE_S:-465}))
read -r -a kernel_args <<<"${KERNEL_CHECK_ARGS:-}"
rm -f "$OUT"/*.log "$OUT/summary.txt"

rows=()
failures=0
declare -A passed=()

# budget_for SECONDS: SECONDS, or less when the deadline leaves less (10 s kept for the summary).
budget_for() {
  local left=$((deadline - SECONDS - 10))
  echo $(($1 < left ? $1 : left))
}

# run_step NAME BUDGET_S COMMAND...: runs COMMAND under a time budget (cut to what the deadline
# leaves), appending to $OUT/${log:-NAME}.log.
run_step() {
  local name=$1 budget
  budget=$(budget_for "$2")
  shift 2
  local start=$SECONDS status result note="" file="$OUT/${log:-$name}.log"
  if ((budget < 15)); then
    failures=$((failures + 1))
    rows+=("$(printf '%-14s %-8s %5s   %s' "$name" SKIPPED - "no time left before the deadline")")
    return 1
  fi
  echo "== $name (budget ${budget}s)"
  {
    printf '$'
    printf ' %q' "$@"
    printf '\n'
    timeout --kill-after=10 "$budget" "$@"
  } >>"$file" 2>&1
  status=$?
  case $status in
    0) result=PASS ;;
    124 | 137) result=TIMEOUT note="over ${budget}s" ;;
    *) result=FAIL note="exit $status" ;;
  esac
  if [[ $status -ne 0 ]]; then
    failures=$((failures + 1))
    echo "-- last lines of $(basename "$file"):"
    tail -n 25 "$file"
  else
    passed[$name]=1
  fi
  rows+=("$(printf '%-14s %-8s %5ds  %s' "$name" "$result" $((SECONDS - start)) "$note")")
  return $status
}

# tables LOG PATTERN: the result tables of a check's log (from the first line matching PATTERN to
# the end), or its last lines when it ended before printing them.
tables() {
  [[ -f $1 ]] || return 0
  echo
  if grep -q "$2" "$1"; then
    sed -n "/$2/,\$p" "$1"
  else
    echo "($(basename "$1") has no result table; its last lines:)"
    tail -n 15 "$1"
  fi
}

# needs STEP NAME: true when STEP passed; otherwise records NAME as skipped.
needs() {
  if [[ -n ${passed[$1]:-} ]]; then return 0; fi
  failures=$((failures + 1))
  rows+=("$(printf '%-14s %-8s %5s   %s' "$2" SKIPPED - "needs $1")")
  return 1
}

# What the machine has, for the log; never fails.
environment='set -x
nvidia-smi -L
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv
nvcc --version
cmake --version
command -v ninja && ninja --version
python3 -c "import nvidia.nccl; print(\"nccl wheel:\", list(nvidia.nccl.__path__)[0])"
ls "$1"
ls "$(dirname "$(command -v nvcc)")/../lib64" | grep -E "cublas|cufft"
echo | g++ -fopenmp -dM -E - | grep _OPENMP
nproc
true'

generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
[[ -d $deps/fmt ]] || echo "run.sh: $deps/fmt missing: run tests/gpu/prepare.sh here first and carry build-gpu-deps"

log=setup run_step environment 20 bash -c "$environment" environment "$deps"
# A build folder configured elsewhere (another root) is started afresh.
if [[ -f $build/CMakeCache.txt ]] && ! grep -q "^CMAKE_HOME_DIRECTORY:INTERNAL=$root/tests/gpu\$" "$build/CMakeCache.txt"; then
  rm -rf "$build"
fi
log=setup run_step configure 60 cmake -S tests/gpu -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DDIJIANG_GPU_ARCH="$arch" -DDIJIANG_DEPS_INCLUDE="$deps"

# One build of every check (nvcc dominates: about 4 minutes at most on 16 cores).
needs configure build &&
  log=setup run_step build 260 cmake --build "$build" -j "$jobs" --target nccl_check train_check kernel_check
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export NCCL_SOCKET_IFNAME=${NCCL_SOCKET_IFNAME:-lo}  # every rank is on this machine: bootstrap over loopback
export DIJIANG_CUDA_SYNC_LAUNCHES=1
needs build nccl_check && run_step nccl_check 60 "$build/nccl_check"
needs build train_check && run_step train_check 60 "$build/train_check"

# kernel_check stops by itself (--time-limit, 15 s inside the step's budget; --case-timeout for one
# case) and still prints the tables of what ran.
if needs build kernel_check; then
  b=$(budget_for 100)
  run_step kernel_check "$b" "$build/kernel_check" --case-timeout 60 --time-limit $((b - 15)) \
    "${kernel_args[@]}"
fi

# The attention kernels under compute-sanitizer: races on shared memory, barrier misuse, and
# out-of-bounds or misaligned accesses, over the checks' edge shapes: each tool starts cases for a
# third of the step's time (--budget; the cases left are skipped, not failed).
sanitize='set -u
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null) ||
  { echo "compute-sanitizer not found"; exit 1; }
status=0
for tool in racecheck synccheck memcheck; do
  echo "== compute-sanitizer --tool $tool"
  "$sanitizer" --tool "$tool" --error-exitcode 3 "$1" --filter dijiang_decay_attention,causal_attention,dijiang_feature_map,dijiang_group_norm_gate,linear_feature_map,linear_normalize \
    --case-timeout 60 --budget "$2" || status=1
done
exit $status'
if needs build sanitizer; then
  b=$(budget_for 120)
  run_step sanitizer "$b" bash -c "$sanitize" sanitize "$build/kernel_check" $(((b - 40) / 3))
fi

unset DIJIANG_CUDA_SYNC_LAUNCHES
if needs build kernel_bench; then
  b=$(budget_for 150)
  run_step kernel_bench "$b" "$build/kernel_check" --bench-only --case-timeout 60 \
    --time-limit $((b - 15)) "${kernel_args[@]}"
fi

{
  printf '%-14s %-8s %6s  %s\n' step result time note
  printf '%s\n' "${rows[@]}"
  tables "$OUT/nccl_check.log" '^check '
  tables "$OUT/train_check.log" '^case (against'
  tables "$OUT/kernel_check.log" '^== kernel checks'
  tables "$OUT/kernel_bench.log" '^== '
  echo
  if [[ $failures -eq 0 ]]; then echo "run.sh: all steps PASS"; else echo "run.sh: $failures step(s) failed"; fi
} | tee "$OUT/summary.txt"
[[ $failures -eq 0 ]]
