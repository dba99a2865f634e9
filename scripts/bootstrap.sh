#!/usr/bin/env bash
# Create .venv at the repo root and install nanokern into it (idempotent).
# torch is installed first (NANOKERN_TORCH, default the CPU build torch==2.13.0; on a GPU
# machine set it to the CUDA build you use), then the package with --no-build-isolation so
# its C++ (and, with a CUDA torch, CUDA) extensions build against that torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  "${PIP[@]}" install "${NANOKERN_TORCH:-torch==2.13.0}"
fi
# the build requirements ([build-system] requires in pyproject.toml): --no-build-isolation does not install them
"${PIP[@]}" install "setuptools>=64" wheel ninja pybind11
"${PIP[@]}" install --no-build-isolation -e ".[test]"
# the bytecode `pip install` would compile for a regular install (an editable one has none; under
# PYTHONDONTWRITEBYTECODE every run would compile each module from source, ~50 ms of start-up)
.venv/bin/python -m compileall -q nanokern
