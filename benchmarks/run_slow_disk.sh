#!/usr/bin/env bash
# The 1 GB export, import and reshard (fp32 TP2 x PP2) against their cp -r + sync floors, first
# with the outputs on a high-latency disk (slow_disk.sh: set up here if it is not, and left up),
# then on the local disk; one CSV row each in results/convert.csv (disk_qd1_mbps tells the disks
# apart). Needs root for the slow disk. REPS (3), SETTLE (8), CACHE (.bench-cache), SLOW_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3} SETTLE=${SETTLE:-8} CACHE=${CACHE:-.bench-cache} SLOW_DIR=${SLOW_DIR:-/tmp/nanokern-slowdisk}
[ -f "$SLOW_DIR/.nanokern-slowdisk" ] || benchmarks/slow_disk.sh up "$SLOW_DIR"
run() {
  .venv/bin/nanokern bench convert --size 1GB --tp 2 --pp 2 --dtype fp32 --out-dtype keep --reps "$REPS" --settle "$SETTLE" \
    --csv benchmarks/results/convert.csv --cache-dir "$CACHE" "$@"
}
for scratch in "$SLOW_DIR/mnt" "$CACHE"; do
  echo "== outputs on $scratch"
  run --scratch-dir "$scratch" --to hf
  run --scratch-dir "$scratch" --to nanotron --from hf
  run --scratch-dir "$scratch" --to nanotron --from nanotron --out-tp 1 --out-pp 1
done
