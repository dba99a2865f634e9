#!/usr/bin/env bash
# Download, here, the wheels of the dependencies the GPU machine's image lacks (Python 3.12,
# x86_64, no network there) into .whl/ (ignored by git). Carry .whl with the checkout;
# benchmarks/gpu_check.sh installs what it finds there into a private folder first.
#
#   bash benchmarks/gpu_wheels.sh        # then: carry [".whl"]; bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
MISSING=("zlib-ng==${ZLIB_NG_VERSION:-1.0.0}")  # the image has the others (torch, triton, transformers, click, tqdm, ...)
rm -rf .whl && mkdir -p .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${MISSING[@]}"
ls -l .whl
