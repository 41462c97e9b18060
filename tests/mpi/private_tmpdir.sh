#!/usr/bin/env bash
# Runs COMMAND with a temporary directory of its own (TMPDIR), removed afterwards.
# Usage: private_tmpdir.sh COMMAND...
# Open MPI keeps each mpirun's session directory under $TMPDIR/ompi.HOST.UID, which the last
# mpirun to finish removes; an mpirun starting at that moment finds it gone after it found it there
# and fails ("A call to mkdir was unable to create the desired directory ... File exists"). ctest
# runs MPI tests side by side, so each gets its own TMPDIR, and its mpiruns, one after another,
# never race.
set -euo pipefail
private="$(mktemp -d)"
trap 'rm -rf "$private"' EXIT
status=0
TMPDIR="$private" "$@" || status=$?
exit "$status"
