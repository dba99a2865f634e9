#!/usr/bin/env python
"""Start-up of the `nanokern` command as a user meets it: each `--help`, exec to exit, and the
time from exec to the first output file of a small conversion (time-to-first-byte as it is).

    python benchmarks/bench_startup.py              # 7 reps, appends rows to results/startup.csv
    python benchmarks/bench_startup.py --reps 11 --no-csv

Every command is run as a child process of the venv's `nanokern` console script (or
`python -m nanokern` when the script is missing); medians over --reps, order rotating each rep.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nanokern.bench.common import REPO_ROOT, append_csv_rows, compile_bytecode, stamp  # noqa: E402

COLUMNS = ["what", "median_s", "min_s", "max_s", "all_s"]
HELPS = ["--help", "convert --help", "inspect --help", "verify --help", "demo --help", "parity --help",
         "bench --help", "bench convert --help", "bench backends --help"]


def _exe() -> list[str]:
    script = Path(sys.executable).with_name("nanokern")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "nanokern"]


def time_help(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([*_exe(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t0


def time_first_file(src: Path, scratch: Path) -> float:
    """exec -> the first output file exists under OUT.partial-* (its bytes follow at once)."""
    out = scratch / "out"
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*_exe(), "convert", str(src), str(out), "-q", "--dtype", "keep"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = None
    while first is None and proc.poll() is None:
        for d in scratch.glob("out.partial-*"):
            if any(p.suffix == ".safetensors" for p in d.rglob("*")):
                first = time.perf_counter() - t0
                break
        time.sleep(0.002)
    proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"convert failed ({proc.returncode})")
    if first is None:  # finished between two polls
        first = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--src", default=str(REPO_ROOT / ".." / "shared" / "fixtures" / "nanotron" / "tp2_pp2"),
                    help="checkpoint for the time-to-first-file row [default: the tp2_pp2 fixture]")
    ap.add_argument("--csv", default=str(REPO_ROOT / "benchmarks" / "results" / "startup.csv"))
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args()
    whats = [("nanokern " + h, h.split()) for h in HELPS]
    times: dict[str, list[float]] = {w: [] for w, _ in whats}
    src = Path(a.src)
    ttfb = "nanokern convert (tiny fixture): exec -> first output file"
    if src.exists():
        times[ttfb] = []
    scratch = Path(tempfile.mkdtemp(prefix="nk-startup-"))
    compile_bytecode()
    try:
        for w, args in whats:  # warm the page cache of every module once, untimed
            time_help(args)
        for rep in range(a.reps):
            order = whats[rep % len(whats):] + whats[: rep % len(whats)]
            for w, args in order:
                times[w].append(time_help(args))
            if ttfb in times:
                times[ttfb].append(time_first_file(src, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lead = stamp("cpu", a.reps)
    rows = []
    for w, ts in times.items():
        med = statistics.median(ts)
        print(f"{w:<60} median {med:6.3f} s  min {min(ts):6.3f}  max {max(ts):6.3f}  ({len(ts)} reps)")
        rows.append({**lead, "reps": len(ts), "what": w, "median_s": round(med, 3), "min_s": round(min(ts), 3),
                     "max_s": round(max(ts), 3),
                     "all_s": " ".join(f"{t:.3f}" for t in ts)})
    if not a.no_csv:
        append_csv_rows(a.csv, COLUMNS, rows)
        print(f"appended {len(rows)} rows to {a.csv}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
