#!/usr/bin/env bash
# bench/gpu.sh DIR OUTDIR: one SD 1.5-architecture model with random fp16
# weights (sdworker-mkmodel --config sd15), one 512x512 image, 20 euler
# steps, CFG 7.5, seed 42, on cuda:0: sdworker, then diffusers on the same
# card with the same weights in fp16 with SDPA attention. With
# SDW_BENCH_CONFIG=sdxl the model is SDXL base 1.0's architecture and the
# image 1024x1024 at CFG 5 (diffusers' SDXL default), 20 euler steps; its
# model takes a few minutes of one core to make, so tests/gpu/run.sh runs it
# only when asked (SDW_GPU_SDXL=1). Prints and writes
# OUTDIR/summary.txt: seconds per image, it/s, text encode, VAE decode, load
# time, peak device memory, and diffusers' time over ours. DIR is a build
# tree (DIR/src/tools/sdworker-*) or the GPU bundle (DIR/bin/sdworker-*,
# tests/gpu/prepare.sh).
#
# Then, while time is left: sdworker with SDW_CUDA_TRIM=1 (the UNet's
# cached device memory given back before the VAE decode), its peak memory
# and speed beside the default's, with the allocator's own figures for both
# (reserved at the start, at most while denoising, while decoding); then
# sdworker once more with CUDA graphs off
# (SDW_CUDA_GRAPHS=0), once with the SIMT attention (float32 arithmetic) in
# place of the tensor-core one (SDW_CUDA_ATTENTION=simt), once with 1 GiB
# of convolution workspace (SDW_CUDA_WORKSPACE_MIB=1024) and once with every
# convolution on cuDNN (SDW_CUDA_CONV=cudnn): what each is worth; and a
# profile of two steps (sdworker-generate --profile): the time of each op
# alone, totals per op in the summary, the costliest shapes in
# OUTDIR/sdworker-profile.log.
#
# Each side generates twice in one process and the second image is reported
# (the first pays for cuDNN's algorithm search, graph capture, cuBLAS and
# CUDA start-up, as a service does once at load): sdworker-generate
# --warmup, and diffusers_bench.py's untimed first run; both first images'
# times are shown too. sdworker runs once before that, untimed, so that both
# read the model from the page cache. sdworker's phase times come from the
# JSON line `sdworker-generate --timings` prints; without it only whole-run
# times are reported. Peak memory is the device's memory in use by the
# process (nvidia-smi, every 100 ms, above what it was before the run: CUDA
# context and libraries included) for both, and the allocator's own peak
# beside it (ours; torch's max_memory_reserved).
#
# Time: every command has a limit; with SDW_BENCH_DEADLINE (epoch seconds,
# set by tests/gpu/run.sh) the diffusers side is skipped, and says so, when
# fewer than SDW_DIFFUSERS_MIN (default 120) seconds remain. Our programs run
# with LD_LIBRARY_PATH=$SDW_LD_LIBRARY_PATH when that is set (the bundle's
# libraries and the machine's CUDA); python3 keeps its own environment.
# Exits 77 (skipped) without a GPU. With --model-only it only makes the
# model (SDW_BENCH_MODEL, default /tmp/sdw-bench-sd15-random; about a minute
# of one core), so that tests/gpu/run.sh can have it made while the tests run.
set -uo pipefail
model_only=0
[ "${1:-}" = --model-only ] && { model_only=1; shift; }
dir=${1:?usage: bench/gpu.sh [--model-only] DIR OUTDIR}
out=${2:?usage: bench/gpu.sh DIR OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
tools=$dir/src/tools
[ -x "$dir/bin/sdworker-generate" ] && tools=$dir/bin
# Not installed: the tools find the bundled CLIP vocabulary in the tree.
export SDW_DATA_DIR=${SDW_DATA_DIR:-$here/data}
ours=(env ${SDW_LD_LIBRARY_PATH:+LD_LIBRARY_PATH=$SDW_LD_LIBRARY_PATH})
deadline=${SDW_BENCH_DEADLINE:-$(($(date +%s) + 3600))}
config=${SDW_BENCH_CONFIG:-sd15}
case $config in
sd15) size=512 guidance=7.5 ;;
sdxl) size=1024 guidance=5 ;;
*) echo "bench/gpu.sh: SDW_BENCH_CONFIG must be sd15 or sdxl" >&2; exit 2 ;;
esac
model=${SDW_BENCH_MODEL:-/tmp/sdw-bench-$config-random}
prompt="a photograph of an astronaut riding a horse on the moon"
common=(--prompt "$prompt" --steps 20 --guidance $guidance --width $size --height $size --seed 42 --sampler euler)

# limit N: N seconds, or fewer when the deadline is nearer.
limit() {
  local l=$((deadline - $(date +%s)))
  [ "$l" -lt "$1" ] && echo $((l > 1 ? l : 1)) || echo "$1"
}

mem_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -n1; }

# peak_run LOG LIMIT CMD...: runs CMD for at most LIMIT seconds, its output
# into LOG; prints "seconds peak_MiB exit_status".
peak_run() {
  local log=$1 base start end
  shift
  base=$(mem_used)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$log.mem" 2>/dev/null &
  local mon=$!
  start=$(date +%s.%N)
  timeout -k 5 "$@" >"$log" 2>&1
  local rc=$?
  end=$(date +%s.%N)
  kill "$mon" 2>/dev/null
  wait "$mon" 2>/dev/null
  local peak
  peak=$(grep -E '^[0-9]+$' "$log.mem" | sort -n | tail -n1)
  case $base in '' | *[!0-9]*) base=0 ;; esac
  echo "$(awk "BEGIN { print $end - $start }") $((${peak:-$base} - base)) $rc"
}

# The model goes to MODEL.part first, so that a folder named MODEL is whole.
make_model() {
  local s
  s=$(date +%s)
  [ -f "$model/model_index.json" ] && return 0
  rm -rf "$model" "$model.part"
  if timeout -k 5 "$(limit 400)" "${ours[@]}" "$tools/sdworker-mkmodel" --config $config --dtype f16 "$model.part" \
    >"$out/mkmodel.log" 2>&1 && mv "$model.part" "$model"; then
    echo "model: $model made in $(($(date +%s) - s))s" >>"$out/mkmodel.log"
  else
    rm -rf "$model.part"
    echo "sdworker-mkmodel failed (see $out/mkmodel.log)" | tee "$out/summary.txt"
    return 1
  fi
}
if [ $model_only = 1 ]; then
  make_model
  exit
fi

if ! nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
  echo "no GPU: nvidia-smi lists no device; bench skipped" | tee "$out/summary.txt"
  exit 77
fi
make_model || exit 1

gen=("${ours[@]}" "$tools/sdworker-generate" --model "$model" "${common[@]}" --device cuda:0 --timings --warmup)
warm_rc=1
read -r _ _ warm_rc < <(peak_run "$out/sdworker-warm.log" "$(limit 150)" "${gen[@]}" --output "$out/sdworker-warm.png")
if [ "$warm_rc" = 0 ]; then
  read -r sdw_s sdw_peak sdw_rc < <(peak_run "$out/sdworker.log" "$(limit 120)" "${gen[@]}" --output "$out/sdworker.png")
else
  cp "$out/sdworker-warm.log" "$out/sdworker.log"
  sdw_s=0 sdw_peak=0 sdw_rc=$warm_rc
fi

dif_rc=0
dif_min=${SDW_DIFFUSERS_MIN:-120}
if [ $((deadline - $(date +%s))) -lt "$dif_min" ]; then
  echo "diffusers skipped: $((deadline - $(date +%s)))s of the time budget left, it needs $dif_min" >"$out/diffusers.log"
  dif_rc=-1
else
  if [ -d "$here/.whl" ]; then
    timeout 120 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$here"/.whl/*.whl >"$out/pip.log" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  read -r _ dif_peak dif_rc < <(peak_run "$out/diffusers.log" "$(limit 300)" env HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 \
    python3 "$here/tests/gpu/diffusers_bench.py" --model "$model" --prompt "$prompt" --size $size --guidance $guidance \
    --output "$out/diffusers.png" \
    --json "$out/diffusers.json")
fi

# variant NAME VAR=VALUE|"" [ARGS...]: sdworker again with one switch in its
# environment (or none) and ARGS after the usual ones, when 60 s are left;
# peak_run's "seconds peak_MiB exit_status" into OUTDIR/sdworker-NAME.peak.
variant() {
  if [ "${sdw_rc:-1}" != 0 ] || [ $((deadline - $(date +%s))) -lt 60 ]; then
    echo "skipped (sdworker failed, or under 60 s of the budget left)" >"$out/sdworker-$1.log"
    return
  fi
  local name=$1 var=$2
  shift 2
  peak_run "$out/sdworker-$name.log" "$(limit 90)" env ${var:+"$var"} "${gen[@]}" "$@" \
    --output "$out/sdworker-$name.png" >"$out/sdworker-$name.peak"
}
variant trim SDW_CUDA_TRIM=1
variant nographs SDW_CUDA_GRAPHS=0
variant simt SDW_CUDA_ATTENTION=simt
variant ws1g SDW_CUDA_WORKSPACE_MIB=1024
variant cudnn SDW_CUDA_CONV=cudnn
# Where the time goes: two steps, generated twice, the second with every op
# timed alone (sdworker-generate --profile).
variant profile "" --steps 2 --profile=40

python3 - "$out" "${sdw_s:-0}" "${sdw_peak:-0}" "${sdw_rc:-1}" "$dif_rc" "${dif_peak:-0}" <<'PY' | tee "$out/summary.txt"
import json, re, sys
out, wall, peak, rc, drc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
dpeak = int(sys.argv[6])
def timings(log):
    t = {}
    try:
        for line in open(log, errors="replace"):
            line = line.strip()
            if line.startswith("{") and "denoise_s" in line:
                t = json.loads(line)
    except OSError:
        pass
    return t
t = timings(f"{out}/sdworker.log")
d = {}
try:
    d = json.load(open(f"{out}/diffusers.json"))
except Exception:
    pass
def f(v, unit=""):
    return "-" if v is None else (f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}")
gen_s = t.get("total_s") if t else None
steps = t.get("unet_calls") or 20
alloc = max(t.get("mem_denoise_peak_mib", 0), t.get("mem_decode_peak_mib", 0))
sdw = {
    "s/image": gen_s if gen_s is not None else (wall if rc == 0 else None),
    "first image s": t.get("warmup_s"),
    "it/s": steps / t["denoise_s"] if t.get("denoise_s") else None,
    "text encode s": t.get("encode_s"),
    "VAE decode s": t.get("decode_s"),
    "load s": t.get("load_s"),
    "peak MiB": peak if rc == 0 else None,
    "allocator peak MiB": alloc or None,
    "process wall s": wall if rc == 0 else None,
}
dif = {k: d.get(k) for k in sdw} if drc == 0 else {k: None for k in sdw}
if drc == 0:
    dif["peak MiB"] = dpeak
print(f"{'metric':<16} {'sdworker':>10} {'diffusers':>10}")
for k in sdw:
    print(f"{k:<16} {f(sdw[k]):>10} {f(dif[k]):>10}")
for name, what in (("nographs", "CUDA graphs off"), ("simt", "SIMT attention"),
                   ("cudnn", "every convolution on cuDNN (SDW_CUDA_CONV=cudnn)")):
    v = timings(f"{out}/sdworker-{name}.log")
    if v.get("denoise_s"):
        print(f"sdworker it/s with {what}: {(v.get('unet_calls') or 20) / v['denoise_s']:.3f}")
    else:
        print(f"sdworker with {what}: no result (see sdworker-{name}.log)")
if t:
    print(f"sdworker UNet steps replayed from a CUDA graph: {t.get('graph_replays', 0)} of {steps}")
def mem(v):
    if "mem_start_mib" not in v:
        return "no allocator figures"
    return (f"allocator: {v['mem_start_mib']} MiB at the start, at most {v['mem_denoise_peak_mib']} denoising, "
            f"{v['mem_decode_peak_mib']} decoding")
if t:
    print(f"sdworker device memory, {mem(t)}")
def peak_of(name):
    try:
        _, p, r = open(f"{out}/sdworker-{name}.peak").read().split()
    except (OSError, ValueError):
        return None
    return p if r == "0" else None
for name, setting in (("trim", "SDW_CUDA_TRIM=1"), ("ws1g", "SDW_CUDA_WORKSPACE_MIB=1024")):
    v, p = timings(f"{out}/sdworker-{name}.log"), peak_of(name)
    if p is not None and v.get("denoise_s"):
        print(f"sdworker with {setting}: peak {p} MiB (default {peak}), "
              f"it/s {(v.get('unet_calls') or 20) / v['denoise_s']:.3f}, VAE decode {v.get('decode_s', 0):.3f} s; "
              f"{mem(v)}")
    else:
        print(f"sdworker with {setting}: no result (see sdworker-{name}.log)")
try:
    prof = open(f"{out}/sdworker-profile.log", errors="replace").read()
except OSError:
    prof = ""
if "by op:" in prof:
    head = next((l for l in prof.splitlines() if l.startswith("profile:")), "")
    print(f"sdworker {head} (2 steps + VAE; costliest shapes in sdworker-profile.log)")
    print(prof[prof.index("by op:"):].rstrip())
else:
    print("sdworker profile: no result (see sdworker-profile.log)")
if sdw["s/image"] and dif.get("s/image"):
    print(f"diffusers s/image / sdworker s/image = {dif['s/image'] / sdw['s/image']:.2f} (above 1: sdworker faster)")
if sdw["it/s"] and dif.get("it/s"):
    print(f"sdworker it/s / diffusers it/s = {sdw['it/s'] / dif['it/s']:.2f}")
if rc:
    print(f"sdworker-generate failed (exit {rc}): see sdworker.log")
if drc < 0:
    print(open(f"{out}/diffusers.log").read().strip())
elif drc:
    print(f"diffusers baseline failed (exit {drc}{', timed out' if drc in (124, 137) else ''}): see diffusers.log")
PY
[ "${sdw_rc:-1}" = 0 ]
