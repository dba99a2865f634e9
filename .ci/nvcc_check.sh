#!/usr/bin/env bash
# Compile-only check of every CUDA source (csrc/**/*.cu) for sm_80 and sm_90, for machines
# without a GPU and with a CPU-only torch: torch's headers from $PYTHON's torch, plus a stub of the
# generated c10/cuda/impl/cuda_cmake_macros.h that CPU wheels lack. Fails if any file fails.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-.venv/bin/python}"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [[ -z "$NVCC" && -x /usr/local/cuda/bin/nvcc ]]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [[ -z "$NVCC" ]]; then
  echo "nvcc_check: SKIPPED (nvcc not found)"
  exit 0
fi

mapfile -t SOURCES < <(find csrc -name '*.cu' | sort)
if [[ ${#SOURCES[@]} -eq 0 ]]; then
  echo "nvcc_check: no .cu files under csrc/" >&2
  exit 1
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/stub/c10/cuda/impl"
echo '#define C10_CUDA_BUILD_SHARED_LIBS' > "$WORK/stub/c10/cuda/impl/cuda_cmake_macros.h"

INCLUDES=()
while IFS= read -r dir; do INCLUDES+=("-I$dir"); done < <("$PYTHON" -c '
import sysconfig
import torch.utils.cpp_extension as ext
for p in ext.include_paths():
    print(p)
print(sysconfig.get_paths()["include"])')
INCLUDES+=("-I$WORK/stub" "-Icsrc" "-Icsrc/include")

FLAGS=(-c -std=c++20 -O3 -Xcompiler -fPIC
       -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
       -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
       -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__)

echo "nvcc_check: $("$NVCC" --version | tail -1); ${#SOURCES[@]} file(s)"
failed=0
for src in "${SOURCES[@]}"; do
  start=$SECONDS
  obj="$WORK/$(echo "$src" | tr / _).o"
  if "$NVCC" "${FLAGS[@]}" "${INCLUDES[@]}" "$src" -o "$obj" > "$WORK/log" 2>&1; then
    echo "  ok    $src ($((SECONDS - start)) s)"
  else
    echo "  FAIL  $src ($((SECONDS - start)) s)"
    sed 's/^/        /' "$WORK/log" | head -60
    failed=1
  fi
done
# The extension's host files (TORCH_LIBRARY_IMPL, module init) are plain C++: syntax-check them.
for src in $(find csrc/cuda -name '*.cpp' | sort); do
  if g++ -std=c++20 -fsyntax-only "${INCLUDES[@]}" "$src" > "$WORK/log" 2>&1; then
    echo "  ok    $src (g++ -fsyntax-only)"
  else
    echo "  FAIL  $src (g++ -fsyntax-only)"
    sed 's/^/        /' "$WORK/log" | head -60
    failed=1
  fi
done
if [[ $failed -ne 0 ]]; then
  echo "nvcc_check: FAILED"
  exit 1
fi
echo "nvcc_check: all CUDA sources compile"
