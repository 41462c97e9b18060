# Helpers for the command-line tests. Each test script is run as: bash SCRIPT DIJIANG SOURCE_DIR.
set -euo pipefail
DIJIANG="$1"
SOURCE_DIR="$2"
FIXTURES="$SOURCE_DIR/tests/fixtures"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export OMP_NUM_THREADS=1

die() { echo "FAIL: $*" >&2; exit 1; }

# expect_failure "message substring" command...: must exit 1 (not crash) and print the substring
# in a single "dijiang: error:" line on stderr.
expect_failure() {
  local needle="$1"; shift
  local status=0
  "$@" >"$WORK/stdout" 2>"$WORK/stderr" || status=$?
  [ "$status" -ne 0 ] || die "expected failure, got success: $*"
  [ "$status" -lt 128 ] || die "crashed with status $status: $*"
  grep -qF -- "$needle" "$WORK/stderr" || { cat "$WORK/stderr" >&2; die "stderr lacks '$needle': $*"; }
  echo "ok: $* -> $(grep -m1 -F -- "$needle" "$WORK/stderr")"
}

json_field() { sed -E "s/.*\"$2\":([^,}]*).*/\1/" <<<"$1"; }

# write_npy PATH DESCR BYTES_PER_VALUE VALUE...: a 1-D little-endian .npy file (version 1.0).
write_npy() {
  local path="$1" descr="$2" size="$3"; shift 3
  local header="{'descr': '$descr', 'fortran_order': False, 'shape': ($#,), }"
  local pad=$(( (64 - (10 + ${#header} + 1) % 64) % 64 ))
  header="$header$(printf '%*s' "$pad" '')"
  local length=$(( ${#header} + 1 ))
  {
    printf '\x93NUMPY\x01\x00'
    printf "\\x$(printf %02x $((length & 255)))\\x$(printf %02x $((length >> 8)))"
    printf '%s\n' "$header"
    for v in "$@"; do
      for ((b = 0; b < size; b++)); do printf "\\x$(printf %02x $(( (v >> (8 * b)) & 255 )))"; done
    done
  } >"$path"
}
