#!/usr/bin/env bash
# Run HERE (with network), not on the GPU machine: downloads the Python wheels
# that bench/gpu.sh needs for its diffusers baseline into .whl/ (git-ignored),
# for the GPU machine's Python 3.12 on x86-64 Linux. That machine already has
# torch, transformers, huggingface_hub, safetensors, numpy, regex, Pillow and
# requests; diffusers and importlib_metadata are what is missing. Override the
# list with WHEELS="name==version ..." if the image changes.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || { mkdir -p "$(git rev-parse --git-path info)"; echo '/.whl/' >>"$(git rev-parse --git-path info)/exclude"; }
mkdir -p .whl
for w in ${WHEELS:-diffusers importlib_metadata}; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d .whl "$w"
done
ls -l .whl
