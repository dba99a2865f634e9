#!/usr/bin/env bash
# Download, here, the wheels of the dependencies the GPU machine's image lacks (Python 3.12,
# x86_64, no network there) into .whl/ (ignored by git). Carry .whl with the checkout;
# benchmarks/gpu_check.sh installs what it finds there into a private folder first.
#
#   bash benchmarks/gpu_wheels.sh        # then: carry [".whl"]; bash benchmarks/gpu_check.sh
#
# Environment: PY_VERSION (3.12: the GPU machine's; benchmarks/gpu_dryrun.sh asks for the
# dry run's own), WHEEL_DIR (.whl), ZLIB_NG_VERSION (1.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
PY_VERSION="${PY_VERSION:-3.12}"
WHEEL_DIR="${WHEEL_DIR:-.whl}"
# zlib-ng: the image has none; pybind11 (pure Python, headers): the C++ build imports it, and the
# image's list (torch, triton, transformers, pytest, click, tqdm) does not name it
MISSING=("zlib-ng==${ZLIB_NG_VERSION:-1.0.0}" "pybind11==${PYBIND11_VERSION:-3.1.0}")
rm -rf "$WHEEL_DIR" && mkdir -p "$WHEEL_DIR"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$WHEEL_DIR" "${MISSING[@]}"
ls -l "$WHEEL_DIR"
