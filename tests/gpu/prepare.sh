#!/usr/bin/env bash
# tests/gpu/prepare.sh [--no-wheels]: run HERE, on a machine with the CUDA
# toolkit, cuBLAS, cuDNN and the Debian -dev packages but no GPU, in the
# checkout that the device tool sends (the session's own repository).
#
# The GPU machine has no network, no -dev packages and 15 minutes in all, so
# nothing is built there. This script builds the CUDA programs here and
# gathers what they need into .gpu/ (ignored by git; it travels with
# carry=[".gpu", ".whl"]):
#   .gpu/bundle.tar.xz     bin/: smoke (tests/gpu/smoke.c), test_backend_ops,
#                          test_cuda_pipeline, test_ops, sdworker-generate,
#                          sdworker-mkmodel; lib/: every shared library they
#                          load that is neither glibc, libstdc++/libgcc nor
#                          CUDA's (cudart, cuBLAS and cuDNN are hundreds of
#                          MiB and come from the GPU machine). Compressed:
#                          OpenBLAS alone is 35 MiB, and the tree, .gpu and
#                          .whl travel within 64 MiB together.
#   .gpu/MANIFEST          what was built, from what, with which toolkit
#   .gpu/sources.sha256    the sources it was built from: run.sh warns when
#                          the tree that travels differs
# and the diffusers wheels into .whl/ (tests/gpu/fetch-wheels.sh). Fixtures
# and data/ are tracked and travel anyway; run.sh reads them from the tree.
#
# The build is out of tree, from a copy of the files that travel (tracked
# and untracked-not-ignored) under $SDW_GPU_SCRATCH (default
# /tmp/sdw-gpuprep-UID), so an in-tree configured checkout is left alone and
# uncommitted changes are included. Ends by checking that every library the
# bundle's programs need resolves from .gpu/lib alone, apart from CUDA's and
# the C/C++ runtime, and by printing the sizes.
set -euo pipefail
wheels=1
[ "${1:-}" = --no-wheels ] && wheels=0
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
cuda=${CUDA_HOME:-/usr/local/cuda}
scratch=${SDW_GPU_SCRATCH:-/tmp/sdw-gpuprep-$(id -u)}
jobs=${JOBS:-2}
bundle=$root/.gpu
progs="src/tools/sdworker-generate src/tools/sdworker-mkmodel tests/test_backend_ops tests/test_cuda_pipeline tests/test_ops"
# Loaded from the GPU machine, never bundled: the C and C++ runtimes that
# every image has, and CUDA's libraries and driver.
system_re='^(ld-linux.*|linux-vdso.*|libc|libm|libmvec|libdl|libpthread|librt|libstdc\+\+|libgcc_s|libcuda|libcudart|libcublas|libcublasLt|libcudnn.*)\.so'

exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.gpu/' .gitignore "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")"; echo '/.gpu/' >>"$exclude"; }

echo "== source snapshot -> $scratch/src"
rm -rf "$scratch" && mkdir -p "$scratch/src" "$scratch/build"
git ls-files -co --exclude-standard -z | tar --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -xf - -C "$scratch/src"
(cd "$scratch/src" && autoreconf -fi) >"$scratch/autoreconf.log" 2>&1 || { cat "$scratch/autoreconf.log"; exit 1; }

echo "== configure --with-cuda=$cuda, make -j$jobs"
(cd "$scratch/build" && ../src/configure --with-cuda="$cuda") >"$scratch/configure.log" 2>&1 ||
  { tail -n 30 "$scratch/configure.log"; exit 1; }
# shellcheck disable=SC2086
make -C "$scratch/build" -j"$jobs" $progs >"$scratch/make.log" 2>&1 || { tail -n 40 "$scratch/make.log"; exit 1; }
gcc -std=gnu11 -O2 -Wall -Wextra -I"$scratch/src/tests" -I"$scratch/src/kernels" -I"$cuda/include" \
  "$scratch/src/tests/gpu/smoke.c" "$scratch"/build/kernels/*.o \
  -L"$cuda/lib64" -Wl,-rpath,"$cuda/lib64" -lcudnn -lcublas -lcudart -lstdc++ -lm -o "$scratch/build/smoke"

echo "== bundle -> $bundle"
stage=$scratch/bundle
rm -rf "$bundle" "$stage" && mkdir -p "$bundle" "$stage/bin" "$stage/lib"
for p in $progs smoke; do cp "$scratch/build/$p" "$stage/bin/"; done
for b in "$stage"/bin/*; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// { print $1, $3 }' | sort -u |
  while read -r name path; do
    [[ $name =~ $system_re ]] || cp -L "$path" "$stage/lib/$name"
  done

{
  echo "built:     $(date -u +%FT%TZ) on $(uname -n)"
  echo "git:       $(git rev-parse HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ' + uncommitted changes')"
  echo "configure: --with-cuda=$cuda"
  echo "nvcc:      $("$cuda/bin/nvcc" --version | tail -n 1)"
  grep -h -E '#define (CUDNN_MAJOR|CUDNN_MINOR|CUBLAS_VER_MAJOR|CUBLAS_VER_MINOR|CUDART_VERSION) ' \
    "$cuda"/include/cudnn_version.h "$cuda"/include/cublas_api.h "$cuda"/include/cuda_runtime_api.h 2>/dev/null |
    sed 's/^#define /header:    /'
  echo "gpu code:  $(grep -o 'arch=compute_[0-9a-z]*,code=sm_[0-9a-z]*' "$scratch/build/Makefile" | sort -u | tr '\n' ' ')"
  echo "needs from the GPU machine:"
  for b in "$stage"/bin/*; do objdump -p "$b" | awk '$1 == "NEEDED" { print $2 }'; done | sort -u |
    grep -E '^lib(cud|cublas)' | sed 's/^/  /'
  echo "  libcublasLt.so.13 (via libcublas), libcudnn_*.so.9 (loaded by libcudnn), libcuda.so.1 (the driver)"
} >"$bundle/MANIFEST"
git ls-files -co --exclude-standard | grep -E '^(src/|kernels/|tests/[^/]*\.[ch]$|tests/gpu/smoke\.c$|configure\.ac$|Makefile\.am$|mk/)' |
  while read -r f; do [ -f "$f" ] && echo "$f"; done | xargs sha256sum >"$bundle/sources.sha256"

echo "== check: with .gpu/lib and CUDA's lib directory hidden, only CUDA libraries may be missing"
# A private mount namespace hides the toolkit's libraries the way a bare
# machine would lack them; without unshare, .gpu/lib coming first is checked.
missing=$(for b in "$stage"/bin/*; do
  if unshare -m true 2>/dev/null; then
    unshare -m sh -c "mount -t tmpfs none '$(readlink -f "$cuda/lib64")' && LD_LIBRARY_PATH='$stage/lib' ldd '$b'"
  else
    LD_LIBRARY_PATH="$stage/lib" ldd "$b"
  fi
done | awk '$2 == "=>" { print $1, $3 }' | sort -u |
  awk -v re="$system_re" -v lib="$stage/lib/" '
    $2 == "not" && $1 !~ /^lib(cuda|cudart|cublas|cublasLt|cudnn.*)\.so/ { print "  not found: " $1 }
    $2 != "not" && $1 !~ re && index($2, lib) != 1 { print "  not from .gpu/lib: " $1 " => " $2 }')
if [ -n "$missing" ]; then
  echo "$missing"
  exit 1
fi
echo "  ok: $(ls "$stage/lib" | tr '\n' ' ')"
tar -cf - -C "$stage" bin lib | xz -T"$jobs" -6 >"$bundle/bundle.tar.xz"

if [ $wheels = 1 ]; then
  echo "== wheels -> .whl"
  "$root/tests/gpu/fetch-wheels.sh"
fi

echo "== sizes"
du -sh "$stage" "$bundle" .whl 2>/dev/null
tree_kib=$(git ls-files -co --exclude-standard -z | du -ck --files0-from=- 2>/dev/null | tail -n 1 | cut -f1)
carry_kib=$(du -sk "$bundle" .whl 2>/dev/null | awk '{ s += $1 } END { print s }')
echo "travels: tree $((tree_kib / 1024)) MiB + .gpu/.whl $((carry_kib / 1024)) MiB = $(((tree_kib + carry_kib) / 1024)) MiB (limit 64)"
[ $((tree_kib + carry_kib)) -lt $((62 * 1024)) ] || { echo "too large to travel"; exit 1; }
echo "ready: run(command=\"tests/gpu/run.sh \$OUT\", carry=[\".gpu\", \".whl\"], timeout_s=480)"
