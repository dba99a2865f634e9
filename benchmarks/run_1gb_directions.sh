#!/usr/bin/env bash
# The published whole-process figures: 1 GB fp32 TP2 x PP2, export, import and reshard, each
# against its own cp -r + sync floor and naive script, one CSV row each in results/convert.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
.venv/bin/nanokern bench convert --size 1GB --tp 2 --pp 2 --dtype fp32 --out-dtype keep --reps "$REPS" --csv benchmarks/results/convert.csv --cache-dir .bench-cache --to hf "$@"
.venv/bin/nanokern bench convert --size 1GB --tp 2 --pp 2 --dtype fp32 --out-dtype keep --reps "$REPS" --csv benchmarks/results/convert.csv --cache-dir .bench-cache --to nanotron --from hf "$@"
.venv/bin/nanokern bench convert --size 1GB --tp 2 --pp 2 --dtype fp32 --out-dtype keep --reps "$REPS" --csv benchmarks/results/convert.csv --cache-dir .bench-cache --to nanotron --from nanotron --out-tp 1 --out-pp 1 "$@"
