#!/usr/bin/env bash
# Set up .venv if needed, then run the embedded default: `nanokern demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/nanokern demo "$@"
