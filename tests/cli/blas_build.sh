# --version and bench name the OpenBLAS the process loaded: its OpenMP build (the one dijiang links,
# whose products share the program's OpenMP threads), its kernels and the thread count, and warn
# when another build of the same library was substituted.
source "$(dirname "$0")/lib.bash"

"$DIJIANG" --version >"$WORK/version"
grep -q '^dijiang ' "$WORK/version" || die "--version lacks the version line: $(cat "$WORK/version")"
grep -qE '^BLAS: OpenBLAS [0-9.]+, OpenMP build \(/[^)]*\), [A-Za-z0-9_]+ kernels, 1 thread$' "$WORK/version" \
  || die "--version does not report the OpenMP build on 1 thread: $(cat "$WORK/version")"
! grep -q warning "$WORK/version" || die "--version warns about the build it was linked with"
echo "ok: $(grep '^BLAS' "$WORK/version")"

# The SIMD width: the CPU's widest by default, SSE2 when DIJIANG_SIMD asks, and a clear error for
# a width that does not exist.
grep -qE '^SIMD: (AVX2 \(8|SSE2 \(4) float lanes\)$' "$WORK/version" || die "--version lacks the SIMD line: $(cat "$WORK/version")"
if grep -q avx2 /proc/cpuinfo; then
  grep -q '^SIMD: AVX2' "$WORK/version" || die "AVX2 CPU but --version says $(grep SIMD "$WORK/version")"
fi
DIJIANG_SIMD=sse2 "$DIJIANG" --version | grep -q '^SIMD: SSE2 (4 float lanes)$' || die "DIJIANG_SIMD=sse2 not reported"
set +e
DIJIANG_SIMD=avx512 "$DIJIANG" --threads 1 bench model --config "$FIXTURES/neox_parallel/f32/config.json" --seq-len 8 \
  --steps 1 >"$WORK/simd.out" 2>"$WORK/simd.err"
status=$?
set -e
[ "$status" -eq 1 ] || die "DIJIANG_SIMD=avx512 exited with $status"
grep -qx "dijiang: error: DIJIANG_SIMD='avx512' is not auto, sse2 or avx2" "$WORK/simd.err" \
  || die "DIJIANG_SIMD=avx512: $(cat "$WORK/simd.err")"
echo "ok: $(grep '^SIMD' "$WORK/version"); DIJIANG_SIMD=sse2 honoured, avx512 refused"

"$DIJIANG" --threads 3 --version | grep -q ', 3 threads$' || die "--threads 3 --version does not report 3 threads"
echo "ok: --threads 3 --version reports 3 threads"

# Debian's pthread build, loaded in its place through LD_LIBRARY_PATH when it is installed.
for dir in /usr/lib/*-linux-gnu/openblas-pthread; do
  [ -e "$dir/libopenblas.so.0" ] || continue
  LD_LIBRARY_PATH="$dir" "$DIJIANG" --version >"$WORK/pthread"
  grep -q "^BLAS: OpenBLAS .*, pthread build ($dir/" "$WORK/pthread" || die "pthread build not reported: $(cat "$WORK/pthread")"
  grep -q "^warning: this is OpenBLAS's pthread build" "$WORK/pthread" || die "no warning for the pthread build"
  echo "ok: LD_LIBRARY_PATH=$dir --version -> $(grep '^warning' "$WORK/pthread" | cut -c1-60)..."
done

# bench model reports the same, in its table and its JSON.
CONFIG="$FIXTURES/neox_parallel/f32/config.json"
out=$("$DIJIANG" -q --threads 2 bench model --config "$CONFIG" --seq-len 16 --steps 1 --json)
grep -q '"blas_build":"OpenMP"' <<<"$out" || die "bench model --json lacks blas_build: $out"
grep -q '"threads":2' <<<"$out" || die "bench model --json lacks threads: $out"
"$DIJIANG" -q bench model --config "$CONFIG" --seq-len 16 --steps 1 >"$WORK/table"
grep -q '^BLAS: OpenBLAS .*, OpenMP build' "$WORK/table" || die "bench model's table lacks the BLAS line"
grep -q '^threads: 1$' "$WORK/table" || die "bench model's table lacks the thread count"
grep -q '^SIMD: ' "$WORK/table" || die "bench model's table lacks the SIMD width"
grep -q '"simd":"' <<<"$out" || die "bench model --json lacks simd: $out"
echo "ok: bench model reports the BLAS build and threads"
