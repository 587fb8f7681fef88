#!/usr/bin/env bash
# Run HERE (with network), not on the GPU machine: downloads the Python wheels
# that bench/gpu.sh needs for its diffusers baseline into .whl/ (git-ignored),
# for the GPU machine's Python 3.12 on x86-64 Linux (tests/gpu/prepare.sh
# calls it). That machine already has torch 2.11, transformers 5.x,
# huggingface_hub 1.33, safetensors 0.8, numpy, regex, requests, filelock,
# Pillow and zipp; diffusers and importlib_metadata are what is missing.
#
# diffusers 0.42.1 asks for huggingface-hub>=1.32 and safetensors>=0.8, which
# the image meets. importlib_metadata stays at 8.7: 10.x adds a dependency
# (lazy-importer) that the image lacks. Override the list with
# WHEELS="name==version ..." if the image changes; one version of each name
# is kept, since pip refuses two.
set -euo pipefail
cd "$(dirname "$0")/../.."
exclude=$(git rev-parse --git-path info/exclude)
grep -qx '/.whl/' .gitignore "$exclude" 2>/dev/null || { mkdir -p "$(dirname "$exclude")"; echo '/.whl/' >>"$exclude"; }
mkdir -p .whl
for w in ${WHEELS:-diffusers==0.42.1 importlib_metadata==8.7.0}; do
  name=${w%%[=<>]*}
  file=$(echo "$name" | tr '-' '_')
  ls .whl/"$file"-*.whl >/dev/null 2>&1 && ! ls .whl/"$file"-"${w##*==}"-*.whl >/dev/null 2>&1 &&
    rm -f .whl/"$file"-*.whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$w"
done
for f in .whl/*.whl; do
  echo "$(basename "$f"): $(unzip -p "$f" '*.dist-info/METADATA' | awk '/^Requires-Dist:/ && !/extra ==/ { sub(/^Requires-Dist: /, ""); printf "%s; ", $0 }')"
done
