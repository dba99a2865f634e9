#!/usr/bin/env python
"""Many small output files: how to make them durable. The same reshard plans executed with an
fsync per file and per folder ("fsync") and with one syncfs per batch ("syncfs", the default),
and with one syncfs per batch but every file through the threaded writer, small ones included
("syncfs_threads": what execute did before SmallFileWriter), against `cp -r` + `sync` of the
source's model/ folder, alternating, medians.

    python benchmarks/bench_durability.py               # 24 layers, hidden 256: 147 and 441 files
    python benchmarks/bench_durability.py --layers 48 --reps 5 --no-csv

The source is a small LLaMA (hidden 256) with many layers written by tests/nt_reference.py at
TP2 x PP2 into .bench-cache/; plans: reshard to TP1 x PP1 and to TP4 x PP2. In-process (the
plan is made once, outside the timing); each run ends with `sync`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from nanokern.bench.common import append_csv_rows, stamp  # noqa: E402

COLUMNS = ["plan", "files", "mbytes", "floor_s", "fsync_s", "syncfs_s",
           "fsync_ratio_floor", "syncfs_ratio_floor", "syncfs_threads_s", "syncfs_threads_ratio_floor"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--csv", default=str(ROOT / "benchmarks" / "results" / "durability.csv"))
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args()

    import torch
    from nt_reference import random_hf, write_nanotron

    import nanokern.execute as ex
    from nanokern.execute import durable, write
    from nanokern.convert import make_plan

    torch.set_num_threads(1)
    cache = ROOT / ".bench-cache" / f"small-files-{a.layers}"
    cfg = dict(num_hidden_layers=a.layers, hidden_size=256, intermediate_size=512, num_attention_heads=8,
               num_key_value_heads=4, vocab_size=4096, tie_word_embeddings=False)
    src = cache / "nt"
    if not (src / "latest.txt").is_file():
        shutil.rmtree(src, ignore_errors=True)
        write_nanotron(src, random_hf(cfg, dtype=torch.float32, scale=0.02), cfg, tp=2, pp=2)
        os.sync()
    plans = {"reshard tp2pp2->tp1pp1": make_plan(src, "nanotron", "keep", tp=1, pp=1),
             "reshard tp2pp2->tp4pp2": make_plan(src, "nanotron", "keep", tp=4, pp=2)}
    times: dict[tuple[str, str], list[float]] = {}
    modes = ["floor", "fsync", "syncfs", "syncfs_threads"]
    small = write.SMALL_FILE_BYTES
    for rep in range(a.reps):
        for mode in modes if rep % 2 == 0 else modes[::-1]:
            for name, plan in plans.items():
                out = cache / "out"
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
                time.sleep(a.settle)
                t0 = time.perf_counter()
                if mode == "floor":
                    subprocess.run(["cp", "-r", str(src / "0" / "model"), str(out)], check=True)
                else:
                    durable.DURABILITY = "fsync" if mode == "fsync" else "syncfs"
                    write.SMALL_FILE_BYTES = 0 if mode == "syncfs_threads" else small
                    ex.execute(plan, out, progress=False)
                os.sync()
                times.setdefault((name, mode), []).append(time.perf_counter() - t0)
                shutil.rmtree(out, ignore_errors=True)
    durable.DURABILITY, write.SMALL_FILE_BYTES = "syncfs", small
    lead = stamp("cpu", a.reps)  # the executor runs on the CPU
    rows = []
    for name, plan in plans.items():
        med = {m: statistics.median(times[(name, m)]) for m in modes}
        mb = sum(f.size for f in plan.files) / 1e6
        print(f"{name}: {len(plan.files)} files, {mb:.1f} MB; medians of {a.reps}: cp -r + sync {med['floor']:.3f} s, "
              f"fsync per file {med['fsync']:.3f} s ({med['fsync'] / med['floor']:.2f}x), "
              f"syncfs per batch {med['syncfs']:.3f} s ({med['syncfs'] / med['floor']:.2f}x), "
              f"syncfs with writer threads for small files {med['syncfs_threads']:.3f} s "
              f"({med['syncfs_threads'] / med['floor']:.2f}x)")
        rows.append({**lead, "plan": name, "files": len(plan.files), "mbytes": round(mb, 1), "floor_s": round(med["floor"], 3),
                     "fsync_s": round(med["fsync"], 3), "syncfs_s": round(med["syncfs"], 3),
                     "fsync_ratio_floor": round(med["fsync"] / med["floor"], 3),
                     "syncfs_ratio_floor": round(med["syncfs"] / med["floor"], 3),
                     "syncfs_threads_s": round(med["syncfs_threads"], 3),
                     "syncfs_threads_ratio_floor": round(med["syncfs_threads"] / med["floor"], 3)})
    if not a.no_csv:
        append_csv_rows(a.csv, COLUMNS, rows)
        print(f"appended {len(rows)} rows to {a.csv}")


if __name__ == "__main__":
    main()
