#!/usr/bin/env bash
# The GPU session's one command: tests/gpu/run.sh OUTDIR
#
# Builds with --with-cuda (make -j16), runs the CUDA tests (every op against
# the CPU backend; the tiny pipelines against the CPU backend), then
# bench/gpu.sh (SD 1.5 architecture, random fp16 weights, 512x512, 20 euler
# steps, CFG 7.5; sdworker vs diffusers on the same card). Full logs go under
# OUTDIR; a short summary table is printed last. Designed to stay under 8
# minutes on an H100.
#
# The source: a `make dist` tarball sdworker-*.tar.gz in the repository root
# when there is one (it holds configure, so the GPU machine needs no
# autotools), else this tree (configure, or autoreconf when present). Build
# dependencies missing there (json-c, libpng, libjpeg, utf8proc, OpenBLAS,
# libcurl, libfcgi development files) are unpacked from .debs/*.deb when that
# folder exists; Python wheels for diffusers from .whl/ (tests/gpu/fetch-wheels.sh).
set -uo pipefail
out=${1:?usage: tests/gpu/run.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
summary=$out/summary.txt
: >"$summary"
t0=$(date +%s)

row() { printf '%-28s %-8s %s\n' "$1" "$2" "$3" >>"$summary"; }

# step NAME TIMEOUT CMD...: runs CMD with its output in OUTDIR/NAME.log.
step() {
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  row "$name" "$([ $rc = 0 ] && echo ok || echo "FAIL($rc)")" "$(($(date +%s) - start))s"
  return $rc
}

nvidia-smi >"$out/nvidia-smi.txt" 2>&1
if [ -d "$root/.debs" ]; then
  for f in "$root"/.debs/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi

src=$root
tarball=$(ls "$root"/sdworker-*.tar.gz 2>/dev/null | head -n1)
if [ -n "$tarball" ]; then
  rm -rf /tmp/sdw-src && mkdir -p /tmp/sdw-src
  tar -xzf "$tarball" -C /tmp/sdw-src --strip-components=1
  src=/tmp/sdw-src
elif [ ! -x "$src/configure" ]; then
  step autoreconf 120 sh -c "cd '$src' && autoreconf -fi"
fi
build=/tmp/sdw-build-gpu
rm -rf "$build" && mkdir -p "$build"
if step configure 120 sh -c "cd '$build' && '$src/configure' --with-cuda" &&
   step make 300 make -C "$build" -j16; then
  for t in test_cuda_kernels test_cuda_pipeline; do
    step "$t" 240 make -C "$build" check TESTS="tests/$t"
    cp "$build/tests/$t.log" "$out/$t.tap" 2>/dev/null
    if [ -f "$out/$t.tap" ]; then
      row "  $t checks" "" "$(grep -c '^ok' "$out/$t.tap") ok, $(grep -c '^not ok' "$out/$t.tap") not ok"
      grep '^not ok' "$out/$t.tap" | head -n 8 | sed 's/^/    /' >>"$summary"
    fi
  done
  step bench 300 "$src/bench/gpu.sh" "$build" "$out/bench"
  [ -f "$out/bench/summary.txt" ] && sed 's/^/  /' "$out/bench/summary.txt" >>"$summary"
fi
row total "" "$(($(date +%s) - t0))s"
echo
echo "== summary (logs in $out)"
cat "$summary"
