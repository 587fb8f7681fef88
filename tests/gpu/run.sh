#!/usr/bin/env bash
# tests/gpu/run.sh OUTDIR: the GPU session's one command, run THERE on the
# bundle that tests/gpu/prepare.sh made HERE (.gpu/, .whl/: carried). No
# build step. In order, each with a time limit:
#   env     nvidia-smi, the machine, the bundle's MANIFEST; warns when the
#           tree's sources differ from those the bundle was built from
#   libs    finds cudart, cuBLAS(Lt) and cuDNN (the toolkit's lib64, the
#           system's, or the pip wheels under python3's site-packages) and
#           the driver's libcuda; stops with the missing soname named
#   smoke   tests/gpu/smoke.c: versions, device, one of our kernels, one
#           cuBLAS product, a cuDNN handle (seconds)
#   test_backend_ops, test_cuda_pipeline (TAP; against the CPU backend)
#   test_ops (the CPU backend that those two compare against, on this CPU)
#   sd15    tests/gpu/sd15_check.sh: the SD 1.5 architecture at 512x512, CUDA
#           fp16 against the CPU, final latents after 1 and 4 steps
#   bench   bench/gpu.sh: SD 1.5 architecture, random fp16 weights, 512x512,
#           20 euler steps, CFG 7.5, sdworker then diffusers (skipped, and
#           said so, when too little of the time budget is left)
# With SDW_GPU_SDXL=1 the bench is SDXL base's architecture at 1024x1024
# (SDW_BENCH_CONFIG=sdxl) and sd15 is left out: a second call, with a
# budget of its own (SDW_GPU_BUDGET=560), since its model alone takes
# minutes to make.
# Logs and TAP under OUTDIR; the summary table is printed last. The whole
# stays within SDW_GPU_BUDGET seconds (default 420) of starting.
set -uo pipefail
out=${1:?usage: tests/gpu/run.sh OUTDIR}
# OUTDIR's contents are replaced by logs.tar.gz at the end: refuse a used one.
if [ -n "$(ls -A "$out" 2>/dev/null)" ]; then
  echo "OUTDIR $out is not empty" >&2
  exit 2
fi
mkdir -p "$out" && out=$(cd "$out" && pwd)
root=$(cd "$(dirname "$0")/../.." && pwd)
# The bundle's programs and libraries, unpacked from .gpu/bundle.tar.xz.
b=${SDW_GPU_UNPACK:-/tmp/sdw-gpu-bundle}
t0=$(date +%s)
deadline=$((t0 + ${SDW_GPU_BUDGET:-420}))
summary=$out/summary.txt
: >"$summary"

row() { printf '%-22s %-9s %s\n' "$1" "$2" "$3" >>"$summary"; }
left() { echo $((deadline - $(date +%s))); }
# The device tool brings back at most 8 files from OUTDIR: at the end every
# log goes into OUTDIR/logs.tar.gz and only it and summary.txt stay loose.
finish() {
  [ -n "${mkpid:-}" ] && kill "$mkpid" 2>/dev/null
  row total "" "$(($(date +%s) - t0))s of ${SDW_GPU_BUDGET:-420}s budget"
  local f tgz
  for f in "$out"/*.log; do
    grep -q '^not ok' "$f" 2>/dev/null || continue
    echo "== first failures in $(basename "$f")"
    grep -m 5 -B 3 '^not ok' "$f" | cut -c1-300
  done
  tgz=$(mktemp /tmp/sdw-gpu-logs.XXXXXX)
  if (cd "$out" && tar -czf "$tgz" --exclude=./summary.txt --exclude='*.mem' .); then
    find "$out" -mindepth 1 -type f ! -path "$out/summary.txt" -delete
    find "$out" -mindepth 1 -type d -empty -delete
    mv "$tgz" "$out/logs.tar.gz"
  fi
  echo
  echo "== summary (logs in $out/logs.tar.gz)"
  cat "$summary"
  exit "${1:-0}"
}

# step NAME LIMIT CMD...: CMD's output into OUTDIR/NAME.log, within LIMIT
# seconds and the budget; exit 77 is a skip.
step() {
  local name=$1 limit=$2 start rc status
  shift 2
  [ "$limit" -gt "$(left)" ] && limit=$(left)
  if [ "$limit" -lt 5 ]; then
    row "$name" skipped "time budget spent"
    return 124
  fi
  start=$(date +%s)
  timeout -k 5 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    77) status=skipped ;;
    124 | 137) status="TIMEOUT" ;;
    *) status="FAIL($rc)" ;;
  esac
  row "$name" "$status" "$(($(date +%s) - start))s"
  return $rc
}

# tap NAME: the counts of OUTDIR/NAME.log and its first failures.
tap() {
  local f=$out/$1.log
  row "  checks" "" "$(grep -c '^ok' "$f") ok ($(grep -c '^ok.*# SKIP' "$f") skipped), $(grep -c '^not ok' "$f") not ok$(grep -q '^1\.\.' "$f" || echo ', no plan: crashed or cut short')"
  grep -E '^not ok|# SKIP' "$f" | head -n 8 | cut -c1-150 | sed 's/^/    /' >>"$summary"
}

if [ ! -f "$root/.gpu/bundle.tar.xz" ]; then
  echo "no bundle at $root/.gpu: run tests/gpu/prepare.sh on the build machine and carry .gpu (and .whl)" | tee "$summary"
  exit 2
fi
rm -rf "$b" && mkdir -p "$b"
# Python's lzma where the image has no xz program.
tar -xJf "$root/.gpu/bundle.tar.xz" -C "$b" 2>/dev/null ||
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$root/.gpu/bundle.tar.xz" "$b" || {
  echo "cannot unpack $root/.gpu/bundle.tar.xz" | tee "$summary"
  exit 2
}

{
  echo "== nvidia-smi"
  timeout 20 nvidia-smi 2>&1
  echo "== machine"
  uname -a
  grep -m1 'model name' /proc/cpuinfo
  nproc
  cat /etc/os-release 2>/dev/null | grep PRETTY
  echo "== bundle"
  cat "$root/.gpu/MANIFEST"
  echo "== sources changed since the bundle was built"
  (cd "$root" && sha256sum --quiet -c "$root/.gpu/sources.sha256" 2>&1) || true
} >"$out/env.log"
gpu=$(timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n 1)
row env "" "${gpu:-no GPU (nvidia-smi: $(timeout 20 nvidia-smi -L 2>&1 | head -n 1))}"
stale=$(cd "$root" && sha256sum --quiet -c "$root/.gpu/sources.sha256" 2>/dev/null | wc -l)
[ "$stale" = 0 ] || row "  WARNING" "" "$stale source files differ from the bundle's build: rerun tests/gpu/prepare.sh"

# Where this machine keeps CUDA's libraries: the toolkit, the system, the
# driver's folder, or the pip wheels that PyTorch uses (nvidia/*/lib,
# nvidia/cu13/lib). Each soname comes from the first directory that has it;
# cuBLAS and cuBLASLt, and cuDNN and its sub-libraries, must share one.
candidates() {
  local d
  for d in ${CUDA_HOME:+$CUDA_HOME/lib64} /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [ -d "$d" ] && echo "$d"
  done
  timeout 30 python3 - <<'PY' 2>/dev/null | while read -r d; do find "$d" -maxdepth 3 -name 'lib*.so*' -printf '%h\n'; done | sort -u
import importlib.util as u
for name in ("nvidia", "torch"):
    s = u.find_spec(name)
    for p in (s.submodule_search_locations or []) if s else []:
        print(p)
PY
}
resolve() {
  local dirs lp="" soname d problems=""
  dirs=$(candidates)
  printf '%s\n' "candidate directories:" "$dirs" >"$out/libs.log"
  for soname in libcuda.so.1 libcudart.so.13 libcublas.so.13 libcudnn.so.9; do
    d=$(for x in $dirs; do [ -e "$x/$soname" ] && { echo "$x"; break; }; done)
    if [ -z "$d" ] && [ $soname = libcuda.so.1 ] && ldconfig -p | grep -q 'libcuda\.so\.1 '; then
      echo "$soname: from ldconfig's cache" >>"$out/libs.log"
      continue
    fi
    if [ -z "$d" ] && [ $soname = libcuda.so.1 ]; then
      # cudart loads the driver at run time: without it, the CUDA steps skip.
      echo "NOTE: libcuda.so.1 not found: no NVIDIA driver on this machine" | tee -a "$out/libs.log"
      continue
    fi
    if [ -z "$d" ]; then
      problems+="$soname not found on this machine; "
      continue
    fi
    echo "$soname: $d" >>"$out/libs.log"
    [ $soname = libcublas.so.13 ] && [ ! -e "$d/libcublasLt.so.13" ] && problems+="libcublasLt.so.13 missing beside $d/$soname; "
    [ $soname = libcudnn.so.9 ] && [ ! -e "$d/libcudnn_graph.so.9" ] && problems+="libcudnn_graph.so.9 missing beside $d/$soname; "
    case ":$lp:" in *":$d:"*) ;; *) lp=${lp:+$lp:}$d ;; esac
  done
  echo "$b/lib${lp:+:$lp}" >"$out/ld_library_path"
  echo "LD_LIBRARY_PATH for our programs: $b/lib${lp:+:$lp}" >>"$out/libs.log"
  local unresolved
  unresolved=$(for x in "$b"/bin/*; do LD_LIBRARY_PATH="$b/lib${lp:+:$lp}" ldd "$x"; done | grep 'not found' | sort -u)
  [ -z "$unresolved" ] || problems+="ldd: $(echo "$unresolved" | awk '{ printf "%s ", $1 }')not found; "
  LD_LIBRARY_PATH="$b/lib${lp:+:$lp}" ldd "$b/bin/test_backend_ops" >>"$out/libs.log" 2>&1
  if [ -n "$problems" ]; then
    echo "MISSING: $problems" | tee -a "$out/libs.log"
    return 1
  fi
}
start=$(date +%s)
if resolve; then
  row libs ok "$(($(date +%s) - start))s"
  grep -E '^(lib[a-z]+\.so\.[0-9]+: |NOTE)' "$out/libs.log" | sed 's/^/  /' >>"$summary"
else
  row libs FAIL "$(($(date +%s) - start))s"
  grep MISSING "$out/libs.log" | sed 's/^/  /' >>"$summary"
  finish 1
fi
# Only our programs get this path: python3 and its torch keep their own.
SDW_LD_LIBRARY_PATH=$(cat "$out/ld_library_path")
export SDW_LD_LIBRARY_PATH
ours=(env LD_LIBRARY_PATH="$SDW_LD_LIBRARY_PATH" SDW_FIXTURES="$root/tests/fixtures" SDW_DATA_DIR="$root/data"
  OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}")

step smoke 60 "${ours[@]}" "$b/bin/smoke"
tap smoke
grep '^#' "$out/smoke.log" | sed 's/^# /  /' >>"$summary"
have_gpu=1
grep -q '^ok.*# SKIP no CUDA device' "$out/smoke.log" && have_gpu=0

[ "${SDW_GPU_SDXL:-0}" = 1 ] && export SDW_BENCH_CONFIG=sdxl
# The bench's 2 GiB model takes a minute of one core (SDXL's 5 GiB, a few):
# made while the tests run.
mkpid=
if [ $have_gpu = 1 ]; then
  mkdir -p "$out/bench"
  "$root/bench/gpu.sh" --model-only "$b" "$out/bench" >/dev/null 2>&1 &
  mkpid=$!
fi

for t in test_backend_ops test_cuda_pipeline; do
  step $t 150 "${ours[@]}" "$b/bin/$t"
  tap $t
done
step test_ops 60 "${ours[@]}" "$b/bin/test_ops"
tap test_ops

# model_step NAME NEED: whether a step on the GPU with the bench's model
# can start with NEED seconds of the budget left (it says why not); waits
# for the model.
model_step() {
  if [ $have_gpu = 0 ]; then
    row "$1" skipped "no GPU (smoke found no CUDA device)"
    return 1
  fi
  if [ "$(left)" -lt "$2" ]; then
    row "$1" skipped "only $(left)s of the budget left (needs $2s)"
    return 1
  fi
  [ -n "$mkpid" ] && wait "$mkpid"
  mkpid=
}

# The full-size architecture on CUDA fp16 against the CPU, 1 and 4 steps;
# it leaves the bench its 120 s.
if [ "${SDW_BENCH_CONFIG:-sd15}" != sd15 ]; then
  row sd15 skipped "the bench runs $SDW_BENCH_CONFIG"
elif model_step sd15 240; then
  step sd15 120 "${ours[@]}" OMP_NUM_THREADS="$(nproc)" "$root/tests/gpu/sd15_check.sh" "$b/bin" \
    "${SDW_BENCH_MODEL:-/tmp/sdw-bench-sd15-random}" "$out/sd15"
  tap sd15
fi

if model_step bench 120; then
  export SDW_BENCH_DEADLINE=$((deadline - 5))
  step bench 400 "$root/bench/gpu.sh" "$b" "$out/bench"
  [ -f "$out/bench/summary.txt" ] && sed 's/^/  /' "$out/bench/summary.txt" >>"$summary"
fi
finish 0
