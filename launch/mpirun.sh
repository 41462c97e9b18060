#!/usr/bin/env bash
# Distributed training with mpirun, on one node or on several.
#
#   launch/mpirun.sh -n RANKS CONFIG.yaml [KEY=VALUE ...] [--resume] [--stop-after N]
#   launch/mpirun.sh -n RANKS --hostfile HOSTS CONFIG.yaml ...      several nodes
#
# Every rank runs `dijiang train` with the same arguments; the global batch (micro_batch x
# grad_accum sequences) is split across the ranks, so the run computes what one process would.
# distributed.zero_stage in the YAML (or as an override) picks the sharding. Rank 0 alone logs
# and writes metrics, plots and resources.json; each rank writes its part of every checkpoint.
#
# One node: RANKS processes, each with cores/RANKS OpenMP threads. Several nodes: a hostfile in
# Open MPI's format ("node1 slots=8" per line), the project checked out and built at the same
# path on every node (or on a shared file system), and checkpoint.dir on a file system all nodes
# share. Extra mpirun options go in MPIRUN_ARGS (e.g. "--mca btl_tcp_if_include eth0").
# SIGTERM or SIGINT (Ctrl-C) to this script makes every rank write a checkpoint and stop: it sends
# SIGUSR1 to mpirun, which forwards it to the ranks. (mpirun itself answers SIGTERM by killing the
# ranks a second later, too soon for a checkpoint.)
# A rank that fails, dies or stops answering (distributed.timeout_s) ends the job: the others say
# what they were waiting for, and every process is gone within seconds.
# Set DIJIANG to a built binary to skip the set-up (packages and build) that runs otherwise.
set -euo pipefail
# The comment block above, as help.
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }

ranks="" hostfile=""
while [ $# -gt 0 ]; do
  case "$1" in
    -n|--ranks) ranks="${2:?-n needs a number}"; shift 2 ;;
    --hostfile) hostfile="${2:?--hostfile needs a file}"; shift 2 ;;
    -h|--help) usage ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || usage
[[ "$ranks" =~ ^[1-9][0-9]*$ ]] || { echo "launch/mpirun.sh: -n RANKS (a positive number) is required" >&2; exit 2; }
[ -z "$hostfile" ] || [ -r "$hostfile" ] || { echo "launch/mpirun.sh: cannot read hostfile $hostfile" >&2; exit 2; }

if [ -z "${DIJIANG:-}" ]; then
  source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
fi
[ -x "$DIJIANG" ] || { echo "launch/mpirun.sh: $DIJIANG is not an executable" >&2; exit 2; }

args=(-np "$ranks" --bind-to none)
if [ -n "$hostfile" ]; then
  args+=(--hostfile "$hostfile" --map-by node)
  threads="${OMP_NUM_THREADS:-1}"
else
  # More ranks than cores is allowed (oversubscribed), each then with one thread.
  args+=(--oversubscribe)
  threads="${OMP_NUM_THREADS:-$(( $(nproc) / ranks > 0 ? $(nproc) / ranks : 1 ))}"
fi
[ "$(id -u)" -ne 0 ] || args+=(--allow-run-as-root)
export OMP_NUM_THREADS="$threads"
# mpirun and every rank load the topology with hwloc; its GL plugin probes ten X displays, each
# probe looking up "localhost", which costs a 5 s DNS timeout now and then where /etc/hosts does
# not name it. Nothing here needs what the plugin finds (GPUs behind an X server).
export HWLOC_COMPONENTS="${HWLOC_COMPONENTS:--gl}"
args+=(-x HWLOC_COMPONENTS)
# How the job ends when a rank fails. A rank that ends it announces that to the others, which
# report what they were waiting for, then calls MPI_Abort (comm/communicator.h); a rank that dies
# or exits non-zero ends it through mpirun (orte_abort_on_non_zero_status, Open MPI's default,
# pinned here against a site's openmpi-mca-params.conf). mpirun then sends every rank left
# SIGCONT, SIGTERM and SIGKILL, odls_base_sigkill_timeout (1 s) apart, so a stopped or busy rank
# ends within seconds too. (Environment variables, which an Open MPI without these ignores.)
export OMPI_MCA_orte_abort_on_non_zero_status=1 OMPI_MCA_odls_base_sigkill_timeout=1
args+=(-x OMP_NUM_THREADS)
[ -z "${OPENBLAS_CORETYPE:-}" ] || args+=(-x OPENBLAS_CORETYPE)
echo "launch: $ranks ranks${hostfile:+ from $hostfile}, $threads threads each" >&2
# mpirun runs in a session of its own, so that Ctrl-C reaches only this script, which stops the
# ranks gracefully.
# shellcheck disable=SC2086
setsid mpirun "${args[@]}" ${MPIRUN_ARGS:-} "$DIJIANG" train "$@" &
job=$!
trap 'kill -USR1 "$job" 2>/dev/null' TERM INT
status=0
while :; do
  wait "$job" && status=0 || status=$?
  # A trapped signal interrupts wait with a status above 128 while mpirun still runs.
  kill -0 "$job" 2>/dev/null || break
done
exit "$status"
