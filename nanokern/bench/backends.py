"""`bench backends`: the same conversion with each gather_cast backend, alternating, medians."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nanokern.bench.common import REPO_ROOT, append_csv_rows, default_cache_dir, device_name, parse_size, schema, stamp
from nanokern.bench.measure import _rm, _run_measured
from nanokern.bench.naive import compare_hf
from nanokern.bench.synthetic import cached_checkpoint

CSV_COLUMNS = schema(["size", "tp", "pp", "dtype", "out_dtype", "rope_interleaved", "scratch_fs", "backend",
                      "seconds_median", "seconds_all", "vs_torch"])


def _fs_type(path: Path) -> str:
    out = subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=False)
    return out.stdout.strip() or "unknown"


def run_backend_bench(size: str, tp: int, pp: int, dtype: str, out_dtype: str, backends: list[str], reps: int,
                      device: str, threads: int, settle: float, cache_dir: str | None, scratch_dir: str | None,
                      echo, rope_interleaved: bool = False) -> list[dict]:
    """Convert the cached synthetic checkpoint with each backend, `reps` rounds, the backend
    order rotating each round; every output is compared with the first backend's, bit for bit.
    rope_interleaved: read the source as trained with interleaved RoPE, so that q and k rows are
    permuted on the way (a row-map gather, as for such real checkpoints)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    src, _ = cached_checkpoint(cache, parse_size(size), tp, pp, dtype, echo)
    parent = Path(scratch_dir) if scratch_dir else cache
    parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="scratch-", dir=parent))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    times: dict[str, list[float]] = {b: [] for b in backends}
    reference = scratch / "reference"
    try:
        for rep in range(reps):
            for k in range(len(backends)):
                b = backends[(k + rep) % len(backends)]
                out = scratch / b
                _rm(out)
                spec = scratch / f"{b}.json"
                result = scratch / f"{b}.result.json"
                spec.write_text(json.dumps({"approach": "nanokern", "src": str(src), "dst": str(out), "to": "hf",
                                            "out_dtype": out_dtype, "backend": b, "device": device, "workers": None,
                                            "threads": threads, "result": str(result),
                                            "plan_options": {"rope_interleaved": rope_interleaved}}))
                time.sleep(settle)  # same memory state before every run (see harness.measure)
                run = _run_measured([sys.executable, "-m", "nanokern.bench", "_worker", str(spec)], env, result)
                times[b].append(run.seconds)
                echo(f"  rep {rep + 1}/{reps} {b:7s} {run.seconds:6.2f} s  cpu {run.cpu:5.2f} s")
                if not reference.exists():
                    shutil.move(str(out), str(reference))
                else:
                    problems = compare_hf(out, reference)
                    if problems:
                        raise RuntimeError(f"backend {b}: output differs from {backends[0]}'s: {problems[:3]}")
                    _rm(out)
        fs = _fs_type(scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    settings = {"size": size, "tp": tp, "pp": pp, "dtype": dtype, "out_dtype": out_dtype,
                "rope_interleaved": rope_interleaved, "scratch_fs": fs}
    return backend_rows(times, stamp(device_name(device), reps), settings)


def backend_rows(times: dict[str, list[float]], lead: dict, settings: dict) -> list[dict]:
    """One row per backend (each with `lead`, the LEADING columns, and `settings`): its median
    time, every run's, and torch's median over its median (rounded to 1 ms / 0.001)."""
    torch_median = statistics.median(times["torch"]) if "torch" in times else None
    rows = []
    for b, ts in times.items():
        med = statistics.median(ts)
        rows.append({**lead, **settings, "backend": b, "seconds_median": round(med, 3),
                     "seconds_all": " ".join(f"{t:.3f}" for t in ts),
                     "vs_torch": round(torch_median / med, 3) if torch_median else ""})
    return rows


def format_rows(rows: list[dict]) -> str:
    r0 = rows[0]
    rope = ", RoPE-interleaved source (q/k rows permuted)" if r0["rope_interleaved"] else ""
    lines = [f"nanokern bench backends: {r0['size']} {r0['dtype']} TP{r0['tp']}xPP{r0['pp']} -> hf ({r0['out_dtype']}){rope}, "
             f"output on {r0['scratch_fs']}, {r0['reps']} rep(s), medians; {r0['machine']}",
             f"{'backend':<8} {'median s':>9} {'torch / backend':>16}  all runs (s)"]
    for r in rows:
        vs = f"{r['vs_torch']:.3f}" if r["vs_torch"] != "" else "-"
        lines.append(f"{r['backend']:<8} {r['seconds_median']:>9.3f} {vs:>16}  {r['seconds_all']}")
    lines.append("outputs of every backend identical, bit for bit: yes")
    return "\n".join(lines)


def append_rows(path: Path, rows: list[dict]) -> None:
    append_csv_rows(path, CSV_COLUMNS, rows)
