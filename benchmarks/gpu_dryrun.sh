#!/usr/bin/env bash
# A dry run, here, of benchmarks/gpu_check.sh as the GPU machine will run it: a fresh venv
# holding only that machine's versions of our dependencies (torch 2.11, triton 3.6,
# transformers 5.17, pytest, click, tqdm; no zlib-ng), the wheels benchmarks/gpu_wheels.sh
# prepares, the package installed without its dependencies (its C++ extension built against that
# torch), then `gpu_check.sh --collect-only`: the GPU test list (defined in gpu_check.sh, only
# there) must collect and `import nanokern.execute, nanokern.cli` must work. Exit 0 when both do.
#
#   bash benchmarks/gpu_dryrun.sh            # about 5 minutes, most of it the torch download
#
# Environment: BASE_PYTHON (python3.12 where one runs, a pyenv one included, else python3.11:
# the wheels are then fetched for 3.11, the dry run's own version), VENV (/tmp/nanokern-gpu-dryrun), KEEP_VENV=1
# (reuse an existing one), NO_BUILD=1 (skip building the extension).
# torch comes from PyPI, whose 2.11 Linux wheel is the CUDA build (it runs on a CPU); the CPU
# build's own index is not reachable from here.
set -euo pipefail
cd "$(dirname "$0")/.."
find_python() {  # the first interpreter that runs: python3.12 (on PATH, or a pyenv install), then 3.11
  local c
  for c in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12 python3.11 python3; do
    if "$c" -c "import venv" >/dev/null 2>&1; then command -v "$c"; return; fi
  done
}
BASE_PYTHON="${BASE_PYTHON:-$(find_python)}"
VENV="${VENV:-/tmp/nanokern-gpu-dryrun}"
PINS=("torch==2.11.*" "triton==3.6.*" "transformers==5.17.*" pytest click tqdm)
PY_VERSION="$("$BASE_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
echo "gpu_dryrun: $BASE_PYTHON (Python $PY_VERSION; the GPU machine has 3.12), venv $VENV"

if [[ "${KEEP_VENV:-0}" != 1 || ! -x "$VENV/bin/python" ]]; then
  rm -rf "$VENV"
  "$BASE_PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "${PINS[@]}"
fi
if "$VENV/bin/python" -c "import zlib_ng" 2>/dev/null; then
  echo "gpu_dryrun: zlib_ng is in the venv (a dependency brought it): the GPU machine has none" >&2
  exit 2
fi
"$VENV/bin/python" -m pip list --format=freeze 2>/dev/null | grep -iE "^(torch|triton|transformers|pytest|click|tqdm|numpy|safetensors|pyyaml|setuptools)=" \
  | tee "$VENV/versions.txt"

# the wheels the GPU machine lacks, for this interpreter's version (gpu_wheels.sh: 3.12 by default)
WHEELS="$VENV/whl"
PYTHON="$VENV/bin/python" PY_VERSION="$PY_VERSION" WHEEL_DIR="$WHEELS" bash benchmarks/gpu_wheels.sh

# A copy of the working tree (what the device tool carries: tracked and untracked, not ignored
# files), so that the checkout's own build is left as it is.
RUN_DIR="$VENV/tree"
rm -rf "$RUN_DIR" && mkdir -p "$RUN_DIR"
git ls-files -z -co --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$RUN_DIR"
ln -sfn "$(realpath ../shared 2>/dev/null || echo /nonexistent)" "$VENV/shared"
if [[ "${NO_BUILD:-0}" != 1 ]]; then
  # built as gpu_check.sh builds there: the carried wheels ahead on PYTHONPATH, nothing else added
  # but setuptools and wheel (a 3.12 venv has no setuptools; the machine's Python does)
  "$VENV/bin/python" -m pip install -q setuptools wheel
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --upgrade --target "$VENV/site" "$WHEELS"/*.whl
  # no nvcc here: the CPU extension only (PyPI's torch has CUDA, so setup.py would build the CUDA one too)
  (cd "$RUN_DIR" && PYTHONPATH="$VENV/site" NANOKERN_NO_CUDA=1 MAX_JOBS=2 \
    "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .)
  "$VENV/bin/python" -c "import torch, nanokern.ops._extension as e, nanokern.ops.host as h; print('gpu_dryrun: extension built against torch', torch.__version__, '| _C:', e.CPU_ERROR or 'ok', '| _cpu:', h.ERROR or 'ok')"
fi

# gpu_check.sh runs from the tree, as on the GPU machine
cd "$RUN_DIR"
PYTHON="$VENV/bin/python" WHEELS="$WHEELS" SITE_DIR="$VENV/site" bash benchmarks/gpu_check.sh --collect-only
