#!/usr/bin/env python
"""Reproduce the published conversion figure (benchmarks/results/convert.csv):

    python benchmarks/bench_convert.py               # 1 GB fp32, TP2 x PP2 -> HF, --dtype keep, 3 reps
    python benchmarks/bench_convert.py --size 4GB    # any `nanokern bench convert` option overrides

A thin wrapper over `nanokern bench convert` (nanokern/bench/): same options, same CSV row.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanokern.bench import bench  # noqa: E402

FIGURE = ["--size", "1GB", "--tp", "2", "--pp", "2", "--dtype", "fp32", "--to", "hf", "--out-dtype", "keep", "--reps", "3",
          # the published rows: appended to results/, the synthetic checkpoints cached on the repo's disk
          "--csv", str(Path(__file__).resolve().parent / "results" / "convert.csv"), "--cache-dir", str(Path(__file__).resolve().parent.parent / ".bench-cache")]

if __name__ == "__main__":
    # later options win in click, so command-line arguments override the figure's defaults
    bench(["convert", *FIGURE, *sys.argv[1:]], prog_name="bench_convert.py")
