#!/usr/bin/env bash
# CPU benchmark on a random-weight model of real size (f16 files, or f32
# with SDW_BENCH_DTYPE=f32), seed 42. SDW_BENCH_MODEL picks it:
#   sd15      (default) SD 1.5, euler, 4 steps, CFG 7.5, at 512x512 and 256x256
#   sd21      SD 2.1 (768, v-prediction), euler, 4 steps, CFG 7.5, at 768x768
#   sd-turbo  SD-Turbo (SD 2.1's architecture), euler_a, 1 step, no CFG, 512x512
#   sdxl      SDXL base 1.0, euler, 2 steps, CFG 5, at 1024x1024
#   sdxl-turbo SDXL-Turbo (SDXL's architecture), euler_a, 1 step, no CFG, 512x512
# or the sizes given as arguments (e.g. bench/cpu.sh 256). Reports load,
# text-encode, per-step (with 2 or more steps), VAE decode and whole-image
# (everything after the load) times and peak RSS (GNU time), and the load
# average before the runs (the figures are only as good as the machine is
# quiet). The model is built once into $SDW_BENCH_CACHE (default
# ~/.cache/sdworker-bench) and reused.
# With SDW_BENCH_DIFFUSERS set to a Python that has diffusers and torch (the
# reference venv: /opt/sdw-ref/bin/python), diffusers runs the same model,
# settings and sizes after sdworker, on the same CPU in the same run
# (bench/cpu_diffusers.py: float32, SDPA), with a row of ratios
# sdworker / diffusers (below 1: sdworker is faster or smaller).
# With SDW_BENCH_LORAS="1 3", rows with that many random LoRAs follow
# (below). Run from the source tree or a build tree; builds first when needed.
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
build=${SDW_BUILD_DIR:-$top}
cache=${SDW_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sdworker-bench}
name=${SDW_BENCH_MODEL:-sd15}
case $name in
sd15) default_sizes="512 256" steps=4 sampler=euler guidance=7.5 ;;
sd21) default_sizes=768 steps=4 sampler=euler guidance=7.5 ;;
sd-turbo) default_sizes=512 steps=1 sampler=euler_a guidance=0 ;;
sdxl) default_sizes=1024 steps=2 sampler=euler guidance=5 ;;
sdxl-turbo) default_sizes=512 steps=1 sampler=euler_a guidance=0 ;;
*) echo "bench/cpu.sh: SDW_BENCH_MODEL must be sd15, sd21, sd-turbo, sdxl or sdxl-turbo" >&2; exit 2 ;;
esac
sizes=${*:-$default_sizes}
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

model=$cache/$name-$dtype
if [ ! -f "$model/vae/diffusion_pytorch_model.safetensors" ]; then
    mkdir -p "$cache"
    echo "building $model (once)..." >&2
    rm -rf "$model"
    /usr/bin/time -v "$build/src/tools/sdworker-mkmodel" --config "$name" --dtype $dtype "$model" \
        2>"$cache/mkmodel-$name-$dtype.time"
    grep -E "Elapsed|Maximum resident" "$cache/mkmodel-$name-$dtype.time" | sed "s/^\s*/mkmodel $name: /" >&2
fi

echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(uname -m) $(nproc) cores, OMP_NUM_THREADS=${OMP_NUM_THREADS:-unset}"
echo "# $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $dtype weights, OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-unset}"
echo "# $name: $sampler, $steps steps, guidance $guidance"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-8s %8s %8s %8s %8s %8s %8s %8s\n' size load_s encode_s s/step decode_s image_s total_s peak_GB
prompt="a photo of a cat"
# val FILE NAME: the number after "NAME: " in FILE (0 when absent: s/step of
# a 1-step run); gib FILE: GNU time's peak RSS in FILE, in GiB.
val() { v=$(sed -n "s/^$2: \([0-9.]*\).*/\1/p" "$1"); echo "${v:-0}"; }
gib() { sed -n 's/.*Maximum resident set size (kbytes): //p' "$1" | awk '{print $1 / 1048576}'; }
row() { awk '{ printf "%-8s %8s %8s %8s %8s %8.2f %8s %8.2f\n", $1, $2, $3, $4, $5, $6 - $2, $6, $7 }'; }
# mine SIZE TAG [ARGS...]: sdworker-generate at SIZE with ARGS; sets $mine
# to "load encode s/step decode total peak_GB". peer SIZE TAG [ARGS...]:
# the same for diffusers into $theirs.
mine() {
    local s=$1 run=$cache/bench-$name-$1-$dtype$2
    shift 2
    /usr/bin/time -v "$build/src/tools/sdworker-generate" --model "$model" --prompt "$prompt" \
        --steps "$steps" --sampler "$sampler" --guidance "$guidance" --seed 42 --width "$s" --height "$s" \
        --output "$run.png" "$@" >"$run.out" 2>"$run.err" ||
        { echo "sdworker-generate failed: see $run.err" >&2; tail -n 5 "$run.err" >&2; exit 1; }
    local step
    step=$(sed -n 's/.*, \([0-9.]*\) s\/step).*/\1/p' "$run.out")
    [ "$steps" -ge 2 ] || step=0
    mine="$(val "$run.out" load) $(val "$run.out" 'text encode') $step $(val "$run.out" 'vae decode')"
    mine="$mine $(val "$run.out" total) $(gib "$run.err")"
}
peer() {
    local s=$1 run=$cache/peer-$name-$1-$dtype$2
    shift 2
    /usr/bin/time -v "$SDW_BENCH_DIFFUSERS" "$top/bench/cpu_diffusers.py" --model "$model" \
        --prompt "$prompt" --steps "$steps" --sampler "$sampler" --guidance "$guidance" --size "$s" \
        --output "$run.png" "$@" >"$run.out" 2>"$run.err" ||
        { echo "diffusers failed: see $run.err" >&2; tail -n 5 "$run.err" >&2; exit 1; }
    theirs="$(val "$run.out" load) $(val "$run.out" 'text encode') $(val "$run.out" 's\/step')"
    theirs="$theirs $(val "$run.out" 'vae decode') $(val "$run.out" total) $(gib "$run.err")"
}
ratio() {
    echo "$1 $2" | awk '{ printf "%-8s", "ratio";
        for (i = 1; i <= 6; i++) {
            if (i == 5) { a = $5 - $1; b = $11 - $7; printf " %7.2fx", (b > 0 ? a / b : 0) }
            printf " %7.2fx", ($(i + 6) > 0 ? $i / $(i + 6) : 0)
        }
        print "" }'
}
for s in $sizes; do
    mine "$s" ""
    echo "${s}x$s $mine" | row
    base_mine=$mine
    [ -n "${SDW_BENCH_DIFFUSERS:-}" ] || continue
    peer "$s" ""
    echo "diffusers $theirs" | row
    base_theirs=$theirs
    ratio "$mine" "$theirs"
done

# LoRA rows (SDW_BENCH_LORAS, e.g. "1 3"): that many random rank-32 LoRAs on
# every UNet attention projection (bench/mklora.py, made with
# $SDW_BENCH_PYTHON or the diffusers Python), at the last size, each at
# weight 1; the extra seconds per step over the rows above, for sdworker and
# (with SDW_BENCH_DIFFUSERS) for diffusers.
[ -n "${SDW_BENCH_LORAS:-}" ] || exit 0
py=${SDW_BENCH_PYTHON:-${SDW_BENCH_DIFFUSERS:-}}
[ -n "$py" ] || { echo "bench/cpu.sh: SDW_BENCH_LORAS needs SDW_BENCH_PYTHON (numpy)" >&2; exit 2; }
[ "$steps" -ge 2 ] || { echo "bench/cpu.sh: LoRA rows need 2 or more steps" >&2; exit 2; }
for n in $SDW_BENCH_LORAS; do
    mineargs=() peerargs=()
    for i in $(seq 1 "$n"); do
        f=$cache/lora-$name-r32-$i.safetensors
        [ -f "$f" ] || "$py" "$top/bench/mklora.py" "$model" 32 "$i" "$f"
        mineargs+=(--lora "$f:1") peerargs+=(--lora "$f")
    done
    mine "$s" "-lora$n" "${mineargs[@]}"
    echo "lora$n $mine" | row
    echo "$base_mine $mine" | awk -v n="$n" '{ printf "# sdworker, %d LoRA(s): %+.1f%% a step\n", n, ($9 / $3 - 1) * 100 }'
    [ -n "${SDW_BENCH_DIFFUSERS:-}" ] || continue
    peer "$s" "-lora$n" "${peerargs[@]}"
    echo "diffusers $theirs" | row
    echo "$base_theirs $theirs" | awk -v n="$n" '{ printf "# diffusers, %d LoRA(s): %+.1f%% a step\n", n, ($9 / $3 - 1) * 100 }'
    ratio "$mine" "$theirs"
done
