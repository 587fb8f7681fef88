#!/usr/bin/env bash
# bench/gpu.sh BUILDDIR OUTDIR: one SD 1.5-architecture model with random fp16
# weights (sdworker-mkmodel --config sd15), one 512x512 image, 20 euler
# steps, CFG 7.5, seed 42, on cuda:0: sdworker, then diffusers on the same
# card with the same weights in fp16 with SDPA attention. Prints and writes
# OUTDIR/summary.txt: seconds per image, it/s, text encode, VAE decode, load
# time, peak device memory, and diffusers' time over ours.
#
# Each side runs twice and the second run is reported (the first pays for
# cuDNN's algorithm search, cuBLAS and CUDA start-up). sdworker's phase times
# come from the JSON line `sdworker-generate --timings` prints; without it
# only whole-run times are reported. Peak memory is the device's memory in
# use (nvidia-smi, every 100 ms) above what it was before the run.
set -uo pipefail
build=${1:?usage: bench/gpu.sh BUILDDIR OUTDIR}
out=${2:?usage: bench/gpu.sh BUILDDIR OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
# Not installed: the tools find the bundled CLIP vocabulary in the tree.
export SDW_DATA_DIR=${SDW_DATA_DIR:-$here/data}
model=$out/sd15-random
prompt="a photograph of an astronaut riding a horse on the moon"
common=(--prompt "$prompt" --steps 20 --guidance 7.5 --width 512 --height 512 --seed 42 --sampler euler)

mem_used() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 | head -n1; }

# peak_run LOG CMD...: runs CMD, its output into LOG; prints "seconds peak_MiB".
peak_run() {
  local log=$1 base start end
  shift
  base=$(mem_used)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i 0 -lms 100 >"$log.mem" 2>/dev/null &
  local mon=$!
  start=$(date +%s.%N)
  "$@" >"$log" 2>&1
  local rc=$?
  end=$(date +%s.%N)
  kill "$mon" 2>/dev/null
  wait "$mon" 2>/dev/null
  local peak
  peak=$(sort -n "$log.mem" | tail -n1)
  echo "$(awk "BEGIN { print $end - $start }") $((${peak:-$base} - base)) $rc"
}

if [ ! -f "$model/model_index.json" ]; then
  "$build/src/tools/sdworker-mkmodel" --config sd15 --dtype f16 "$model" >"$out/mkmodel.log" 2>&1 || {
    echo "sdworker-mkmodel failed (see $out/mkmodel.log)" | tee "$out/summary.txt"
    exit 1
  }
fi

gen=("$build/src/tools/sdworker-generate" --model "$model" "${common[@]}" --device cuda:0 --timings)
peak_run "$out/sdworker-warm.log" "${gen[@]}" --output "$out/sdworker-warm.png" >/dev/null
read -r sdw_s sdw_peak sdw_rc < <(peak_run "$out/sdworker.log" "${gen[@]}" --output "$out/sdworker.png")

if [ -d "$here/.whl" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$here"/.whl/*.whl >"$out/pip.log" 2>&1 && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
PYTHONUNBUFFERED=1 python3 "$here/tests/gpu/diffusers_bench.py" --model "$model" --prompt "$prompt" \
  --output "$out/diffusers.png" --json "$out/diffusers.json" >"$out/diffusers.log" 2>&1
dif_rc=$?

python3 - "$out" "$sdw_s" "$sdw_peak" "$sdw_rc" "$dif_rc" <<'PY' | tee "$out/summary.txt"
import json, re, sys
out, wall, peak, rc, drc = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
t = {}
for line in open(f"{out}/sdworker.log", errors="replace"):
    line = line.strip()
    if line.startswith("{") and "denoise_s" in line:
        t = json.loads(line)
d = {}
try:
    d = json.load(open(f"{out}/diffusers.json"))
except Exception:
    pass
def f(v, unit=""):
    return "-" if v is None else (f"{v:.3f}{unit}" if isinstance(v, float) else f"{v}{unit}")
gen_s = t.get("total_s") if t else None
steps = t.get("unet_calls") or 20
sdw = {
    "s/image": gen_s if gen_s is not None else (wall if rc == 0 else None),
    "it/s": steps / t["denoise_s"] if t.get("denoise_s") else None,
    "text encode s": t.get("encode_s"),
    "VAE decode s": t.get("decode_s"),
    "load s": t.get("load_s"),
    "peak MiB": peak if rc == 0 else None,
    "process wall s": wall if rc == 0 else None,
}
dif = {k: d.get(k) for k in sdw} if drc == 0 else {k: None for k in sdw}
print(f"{'metric':<16} {'sdworker':>10} {'diffusers':>10}")
for k in sdw:
    print(f"{k:<16} {f(sdw[k]):>10} {f(dif[k]):>10}")
if sdw["s/image"] and dif.get("s/image"):
    print(f"diffusers s/image / sdworker s/image = {dif['s/image'] / sdw['s/image']:.2f} (above 1: sdworker faster)")
if rc:
    print(f"sdworker-generate failed (exit {rc}): see sdworker.log")
if drc:
    print(f"diffusers baseline failed (exit {drc}): see diffusers.log")
PY
