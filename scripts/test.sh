#!/usr/bin/env bash
# Everything from nothing: environment, install (builds the C++ extension), CUDA compile check
# (when nvcc is present), then the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
bash .ci/nvcc_check.sh
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
