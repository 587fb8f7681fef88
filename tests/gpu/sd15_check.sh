#!/usr/bin/env bash
# tests/gpu/sd15_check.sh TOOLS MODEL OUTDIR: the full-size SD 1.5
# architecture (random fp16 weights, bench/gpu.sh's model) on CUDA against
# the CPU backend, at 512x512 with CFG 7.5 and euler, seed 42: the final
# latents after one step and after four, CUDA fp16 (the default precision)
# against the CPU's float32 arithmetic on the same weights, within 1e-2
# relative error (max abs difference over max abs reference). TAP on stdout.
# TOOLS holds sdworker-generate; our programs run with
# LD_LIBRARY_PATH=$SDW_LD_LIBRARY_PATH when that is set. The CPU runs take
# most of the time (OMP_NUM_THREADS cores). SDW_CHECK_DEVICE (default
# cuda:0) names the device under test, so that the script itself can be
# tried without a GPU (with cpu, on any model).
set -uo pipefail
tools=${1:?usage: tests/gpu/sd15_check.sh TOOLS MODEL OUTDIR}
model=${2:?usage: tests/gpu/sd15_check.sh TOOLS MODEL OUTDIR}
out=${3:?usage: tests/gpu/sd15_check.sh TOOLS MODEL OUTDIR}
mkdir -p "$out"
dev=${SDW_CHECK_DEVICE:-cuda:0}
ours=(env ${SDW_LD_LIBRARY_PATH:+LD_LIBRARY_PATH=$SDW_LD_LIBRARY_PATH})
gen() {
  "${ours[@]}" "$tools/sdworker-generate" --model "$model" --prompt "a photograph of an astronaut riding a horse" \
    --negative-prompt "blurry" --guidance 7.5 --width 512 --height 512 --seed 42 --sampler euler --quiet "$@"
}

# rel_err A B TOL: prints max |a - b| over max |b| of two raw float32
# files; fails when it is above TOL, NaN, or the sizes differ.
rel_err() {
  python3 - "$1" "$2" "$3" <<'PY'
import array, math, sys
a, b = array.array("f"), array.array("f")
a.frombytes(open(sys.argv[1], "rb").read())
b.frombytes(open(sys.argv[2], "rb").read())
if len(a) != len(b) or not b:
    print(f"sizes differ ({len(a)} and {len(b)} floats)")
    sys.exit(1)
if any(math.isnan(x) for x in a):
    print("NaN in the result")
    sys.exit(1)
r = max(abs(x - y) for x, y in zip(a, b)) / max(max(abs(y) for y in b), 1e-30)
print("%.3e" % r)
sys.exit(0 if r <= float(sys.argv[3]) else 1)
PY
}

echo "1..2"
n=0
for steps in 1 4; do
  n=$((n + 1))
  if ! gen --steps $steps --device "$dev" --output "$out/cuda-$steps.png" --latents "$out/cuda-$steps.f32" \
    >"$out/cuda-$steps.log" 2>&1; then
    echo "not ok $n - $steps step(s): $dev fails: $(tail -n 1 "$out/cuda-$steps.log")"
    continue
  fi
  if ! gen --steps $steps --device cpu --output "$out/cpu-$steps.png" --latents "$out/cpu-$steps.f32" \
    >"$out/cpu-$steps.log" 2>&1; then
    echo "not ok $n - $steps step(s): cpu fails: $(tail -n 1 "$out/cpu-$steps.log")"
    continue
  fi
  if r=$(rel_err "$out/cuda-$steps.f32" "$out/cpu-$steps.f32" 1e-2); then
    echo "ok $n - SD 1.5 512x512, $steps euler step(s), CFG 7.5: $dev fp16 vs cpu latents rel err $r"
  else
    echo "not ok $n - SD 1.5 512x512, $steps euler step(s), CFG 7.5: $dev fp16 vs cpu latents: $r (limit 1e-2)"
  fi
done
