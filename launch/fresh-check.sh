#!/usr/bin/env bash
# Proves the README's two commands on a fresh Debian 12 system. Builds one with debootstrap
# (bookworm, minbase, from the Debian mirror) in a temporary directory, copies the repository in
# as a clone has it (the files git tracks, as they are in this working tree: no build outputs),
# then runs launch/demo.sh and launch/test.sh there as root, as a new user would, and prints
# each command's result and time, the demo's table and the test counts. The temporary system is
# removed afterwards, mounts included, however the script ends (success, failure, Ctrl-C).
#
#   sudo launch/fresh-check.sh
#
# Not part of CI: it takes about 15-25 minutes on 2 cores, most of it the build. Run it before
# you stop whenever the set-up (packages), the build or the launch scripts change, and quote its
# summary. Needs root (debootstrap, chroot, mounts), network access to the mirror and about
# 5 GB of disk. It installs debootstrap here if it is missing.
#
# The system is what debootstrap makes, apt sources as an installed system has them (the release,
# its updates and security), /proc, /sys, /dev/pts and a tmpfs /dev/shm mounted, the host's
# /etc/resolv.conf and nothing else: no CUDA (the build is CPU-only, as a new user's without
# CUDA), no /etc/hosts (so "localhost" goes to DNS, harsher than an installed system).
#
# Environment: DEBIAN_MIRROR (default http://deb.debian.org/debian) and DEBIAN_SECURITY_MIRROR
# (default http://deb.debian.org/debian-security); FRESH_CHECK_TMP, where the temporary system
# goes (default /var/tmp); FRESH_CHECK_LOGS, where the logs are kept (default a new directory
# under /tmp); FRESH_CHECK_VERBOSE=1 also streams the commands' output.
set -euo pipefail
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 2; }
case "${1:-}" in -h|--help) usage ;; "") ;; *) echo "launch/fresh-check.sh: no arguments expected" >&2; usage ;; esac

say() { echo "fresh-check: $*"; }
refuse() { echo "launch/fresh-check.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
SUITE=bookworm

[ "$(id -u)" -eq 0 ] || refuse "must run as root (debootstrap, chroot and mounts need it): sudo $0"
if ! command -v git >/dev/null || ! git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
  refuse "$REPO is not a git checkout (the copy is the files git tracks)"
fi

LOGS="${FRESH_CHECK_LOGS:-$(mktemp -d /tmp/dijiang-fresh-check-logs.XXXXXX)}"
mkdir -p "$LOGS"

# Long commands run in the background, their pid in $current, so that a signal to this script is
# handled at once (bash runs a trap only after a foreground command ends) and cleanup can end them.
current=""

# quiet_step DESCRIPTION LOG COMMAND...: COMMAND's output goes to LOG; one line here, the whole
# log on failure.
quiet_step() {
  local what="$1" log="$2" start=$SECONDS status=0
  shift 2
  printf 'fresh-check: %s... ' "$what"
  "$@" >>"$log" 2>&1 &
  current=$!
  wait "$current" || status=$?
  current=""
  if [ "$status" -eq 0 ]; then echo "done ($((SECONDS - start)) s)"; return 0; fi
  echo "failed (exit status $status); the log ($log):"
  cat "$log"
  return "$status"
}

if ! command -v debootstrap >/dev/null; then
  say "debootstrap is missing; installing it"
  if ! quiet_step "apt-get update" "$LOGS/host-packages.log" apt-get update ||
     ! quiet_step "apt-get install debootstrap" "$LOGS/host-packages.log" \
         env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends debootstrap; then
    refuse "debootstrap is missing and could not be installed (apt-get install debootstrap)"
  fi
  command -v debootstrap >/dev/null || refuse "debootstrap is still missing after installing it"
fi

WORK="$(mktemp -d "${FRESH_CHECK_TMP:-/var/tmp}/dijiang-fresh.XXXXXX")"
ROOT="$WORK/root"

# Mount points inside the temporary system, deepest first.
mounts_inside() {
  awk -v root="$ROOT" '$2 == root || index($2, root "/") == 1 { print $2 }' /proc/self/mounts \
    | awk '{ print length, $0 }' | sort -rn | cut -d' ' -f2-
}

# kill_tree PID: that process and all its descendants.
kill_tree() {
  local child
  for child in $(awk -v parent="$1" '{ sub(/^[0-9]+ \(.*\) /, ""); if ($2 == parent) print FILENAME }' \
                   /proc/[0-9]*/stat 2>/dev/null | cut -d/ -f3); do
    kill_tree "$child"
  done
  kill -KILL "$1" 2>/dev/null
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  set +e
  # What is still running (after a failure or a signal) was started here: the current command
  # and anything left inside the temporary system.
  if [ -n "$current" ]; then echo; say "stopping the running command"; kill_tree "$current"; fi
  local pid link left
  for _ in 1 2 3 4 5; do
    left=0
    for pid in /proc/[0-9]*; do
      link="$(readlink "$pid/root" 2>/dev/null)" || continue
      if [ "$link" = "$ROOT" ] || [ "${link#"$ROOT"/}" != "$link" ]; then
        kill -KILL "${pid#/proc/}" 2>/dev/null && left=1
      fi
    done
    [ "$left" -eq 1 ] || break
    sleep 1
  done
  local mount
  for _ in 1 2 3; do
    while read -r mount; do
      [ -n "$mount" ] || continue
      umount "$mount" 2>/dev/null || umount -l "$mount" 2>/dev/null
    done < <(mounts_inside)
    [ -z "$(mounts_inside)" ] && break
    sleep 1
  done
  if [ -n "$(mounts_inside)" ]; then
    echo "fresh-check: could not unmount $(mounts_inside | tr '\n' ' '); left $WORK in place" >&2
  else
    rm -rf --one-file-system "$WORK"
    say "removed the temporary system ($WORK); logs in $LOGS"
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

commit="$(git -C "$REPO" rev-parse --short HEAD)"
changes=""
[ -z "$(git -C "$REPO" status --porcelain --untracked-files=no)" ] || changes=" with uncommitted changes"
say "Debian 12 ($SUITE, minbase) from $MIRROR into $WORK; repository at $commit$changes; logs in $LOGS"
started=$SECONDS

quiet_step "debootstrap" "$LOGS/debootstrap.log" debootstrap --variant=minbase "$SUITE" "$ROOT" "$MIRROR"
debootstrap_s=$((SECONDS - started))

cat >"$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
mount -t proc proc "$ROOT/proc"
mount -t sysfs sysfs "$ROOT/sys"
mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$ROOT/dev/pts"
mount --bind "$ROOT/dev/pts/ptmx" "$ROOT/dev/ptmx" 2>/dev/null || true
mount -t tmpfs -o mode=1777 tmpfs "$ROOT/dev/shm"

# The repository as a clone has it: the tracked files (a file deleted but not yet committed is
# left out).
mkdir -p "$ROOT/root/dijiang"
git -C "$REPO" ls-files -z | (cd "$REPO" && while IFS= read -r -d '' f; do
  [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"; done) \
  | tar -C "$REPO" --null -T - -cf - | tar -C "$ROOT/root/dijiang" -xf -
files="$(find "$ROOT/root/dijiang" -type f | wc -l)"
say "copied $files tracked files to /root/dijiang"

# run NAME COMMAND: runs the README command in the fresh system as root in a login-like
# environment; its output goes to $LOGS/NAME.log.
run() {
  local name="$1" command="$2" status=0 start=$SECONDS
  say "running $command (log: $LOGS/$name.log)"
  local inside=(chroot "$ROOT" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash
                TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
                /bin/bash -c "cd /root/dijiang && $command")
  "${inside[@]}" </dev/null >"$LOGS/$name.log" 2>&1 &
  current=$!
  [ "${FRESH_CHECK_VERBOSE:-0}" != 1 ] || tail -n +1 -f --pid="$current" "$LOGS/$name.log" &
  wait "$current" || status=$?
  current=""
  result[$name]=$status
  took[$name]=$((SECONDS - start))
  if [ "$status" -eq 0 ]; then say "$command: ok after $((SECONDS - start)) s"
  else say "$command: FAILED (exit status $status) after $((SECONDS - start)) s; its last lines:"; tail -n 40 "$LOGS/$name.log"; fi
}

declare -A result took
run demo launch/demo.sh
run test launch/test.sh

echo
say "summary (Debian 12 $SUITE minbase, repository at $commit$changes, $(nproc) cores)"
printf '  %-16s %-7s %6s s\n' debootstrap ok "$debootstrap_s"
for name in demo test; do
  printf '  %-16s %-7s %6s s\n' "launch/$name.sh" "$([ "${result[$name]}" -eq 0 ] && echo ok || echo FAILED)" \
    "${took[$name]}"
done
printf '  %-16s %-7s %6s s\n' total "" "$((SECONDS - started))"
echo
echo "launch/demo.sh:"
sed -n '/^tiny model as/,/^safetensors (export)/p; /^validation (held-out/,/^wall time/p' "$LOGS/demo.log" | sed 's/^/  /'
echo "launch/test.sh:"
grep -E "tests passed|tests failed out of|Total Test time|\*\*\*(Failed|Timeout|Exception)|^The following tests" "$LOGS/test.log" \
  | sed 's/^/  /' || true
[ "${result[demo]}" -eq 0 ] && [ "${result[test]}" -eq 0 ]
