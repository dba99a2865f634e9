#!/usr/bin/env python
"""Reproduce the backend comparison (benchmarks/results/backends.csv):

    python benchmarks/bench_backends.py                               # 1 GB fp32 TP2 x PP2 -> HF bf16, cpu vs torch, 5 reps
    python benchmarks/bench_backends.py --scratch-dir /dev/shm/nk     # outputs on tmpfs: the disk out of the comparison

A thin wrapper over `nanokern bench backends` (nanokern/bench/): same options, same CSV rows.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanokern.bench import bench  # noqa: E402

FIGURE = ["--size", "1GB", "--tp", "2", "--pp", "2", "--dtype", "fp32", "--out-dtype", "bf16", "--backends", "cpu,torch", "--reps", "5",
          # the published rows: appended to results/, the synthetic checkpoints cached on the repo's disk
          "--csv", str(Path(__file__).resolve().parent / "results" / "backends.csv"), "--cache-dir", str(Path(__file__).resolve().parent.parent / ".bench-cache")]

if __name__ == "__main__":
    bench(["backends", *FIGURE, *sys.argv[1:]], prog_name="bench_backends.py")
