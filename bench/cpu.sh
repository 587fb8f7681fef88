#!/bin/sh
# CPU benchmark: SD 1.5-sized random-weight model (f16 files, or f32 with
# SDW_BENCH_DTYPE=f32), euler, 4 steps, CFG 7.5, seed 42, at 512x512 and
# 256x256 (or the sizes given as arguments, e.g. bench/cpu.sh 256). Reports
# load, text-encode, per-step and VAE decode times and peak RSS (GNU time),
# and the load average before the runs (the figures are only as good as the
# machine is quiet). The model is built once into $SDW_BENCH_CACHE (default
# ~/.cache/sdworker-bench) and reused.
# With SDW_BENCH_DIFFUSERS set to a Python that has diffusers and torch (the
# reference venv: /opt/sdw-ref/bin/python), diffusers runs the same model,
# settings and sizes after sdworker, on the same CPU in the same run
# (bench/cpu_diffusers.py: float32, SDPA), with a row of ratios
# sdworker / diffusers (below 1: sdworker is faster or smaller).
# Run from the source tree or a build tree; builds first when needed.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${SDW_BUILD_DIR:-$top}
cache=${SDW_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sdworker-bench}
sizes=${*:-512 256}
dtype=${SDW_BENCH_DTYPE:-f16}
case $dtype in f16 | f32) ;; *) echo "bench/cpu.sh: SDW_BENCH_DTYPE must be f16 or f32" >&2; exit 2 ;; esac
: "${SDW_DATA_DIR:=$top/data}"
export SDW_DATA_DIR

if [ ! -x /usr/bin/time ]; then
    echo "bench/cpu.sh: needs GNU time (/usr/bin/time): apt-get install time" >&2
    exit 2
fi
if [ ! -f "$build/Makefile" ]; then
    (cd "$build" && { [ -x configure ] || autoreconf -fi; } && ./configure)
fi
make -C "$build" -j2 src/tools/sdworker-mkmodel src/tools/sdworker-generate >/dev/null

model=$cache/sd15-$dtype
if [ ! -f "$model/vae/diffusion_pytorch_model.safetensors" ]; then
    mkdir -p "$cache"
    echo "building $model (once)..." >&2
    rm -rf "$model"
    /usr/bin/time -v "$build/src/tools/sdworker-mkmodel" --config sd15 --dtype $dtype "$model" 2>"$cache/mkmodel-$dtype.time"
    grep -E "Elapsed|Maximum resident" "$cache/mkmodel-$dtype.time" | sed 's/^\s*/mkmodel sd15: /' >&2
fi

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m) $(nproc) cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
echo "# $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $dtype weights, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %8s %8s %8s %8s %8s %8s\n' size load_s encode_s s/step decode_s total_s peak_GB
prompt="a photo of a cat" steps=4
# val FILE NAME: the number after "NAME: " in FILE; gib FILE: GNU time's
# peak RSS in FILE, in GiB.
val() { sed -n "s/^$2: \([0-9.]*\).*/\1/p" "$1"; }
gib() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1" | awk '{print $1 / 1048576}'; }
for s in $sizes; do
    run=$cache/bench-$s-$dtype
    /usr/bin/time -v "$build/src/tools/sdworker-generate" --model "$model" --prompt "$prompt" \
        --steps "$steps" --sampler euler --guidance 7.5 --seed 42 --width "$s" --height "$s" --output "$run.png" \
        >"$run.out" 2>"$run.err"
    step=$(sed -n 's/.*, \([0-9.]*\) s\/step).*/\1/p' "$run.out")
    mine="$(val "$run.out" load) $(val "$run.out" 'text encode') $step $(val "$run.out" 'vae decode')"
    mine="$mine $(val "$run.out" total) $(gib "$run.err")"
    echo "${s}x$s $mine" | awk '{ printf "%-8s %8s %8s %8s %8s %8s %8.2f\n", $1, $2, $3, $4, $5, $6, $7 }'
    [ -n "${SDW_BENCH_DIFFUSERS:-}" ] || continue
    peer=$cache/peer-$s-$dtype
    /usr/bin/time -v "$SDW_BENCH_DIFFUSERS" "$top/bench/cpu_diffusers.py" --model "$model" \
        --prompt "$prompt" --steps "$steps" --size "$s" --output "$peer.png" >"$peer.out" 2>"$peer.err" ||
        { echo "diffusers failed: see $peer.err" >&2; tail -n 5 "$peer.err" >&2; exit 1; }
    theirs="$(val "$peer.out" load) $(val "$peer.out" 'text encode') $(val "$peer.out" 's\/step')"
    theirs="$theirs $(val "$peer.out" 'vae decode') $(val "$peer.out" total) $(gib "$peer.err")"
    echo "diffusers $theirs" | awk '{ printf "%-8s %8s %8s %8s %8s %8s %8.2f\n", $1, $2, $3, $4, $5, $6, $7 }'
    echo "$mine $theirs" | awk '{ printf "%-8s", "ratio"; for (i = 1; i <= 6; i++) printf " %7.2fx", $i / $(i + 6); print "" }'
done
