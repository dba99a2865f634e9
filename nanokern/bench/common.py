"""Constants, size parsing, and the one results schema every benchmark CSV follows: the same
leading columns (LEADING: when, which commit, which machine and device, which torch and triton,
how many repetitions), then the benchmark's own columns."""

from __future__ import annotations

import csv
import datetime as _dt
import importlib.metadata
import os
import subprocess
from pathlib import Path

import click

from nanokern.io import dtypes, units

GEN_VERSION = 2  # bump when the generated checkpoint changes: invalidates the cache
REPO_ROOT = Path(__file__).resolve().parents[2]
# every results CSV starts with these columns, in this order (rows recorded before a column existed: empty)
LEADING = ["timestamp", "commit", "machine", "device", "torch", "triton", "reps"]
CSV_COLUMNS = [  # results/convert.csv
    *LEADING, "size", "tp", "pp", "dtype", "out_dtype", "workers", "backend", "nproc", "floor_s", "nanokern_s",
    "naive_s", "ratio_floor", "speedup_naive", "peak_anon_mb", "baseline_anon_mb", "largest_tensor_mb", "mem_ratio",
    # whole processes (exec to exit, then sync), per direction; rows from before these: empty
    "direction", "out_tp", "out_pp", "whole_s", "naive_whole_s", "whole_ratio_floor", "whole_speedup_naive",
    "arch",  # the synthetic family (rows from before it: llama)
    # the output disk with one O_DIRECT write of 16 MiB in flight (MB/s), and nanokern's own writes in flight while
    # writing (whole process, medians; mean number and MB); rows from before these: empty
    "disk_qd1_mbps", "writes_in_flight", "mb_in_flight",
]
ST_DTYPES = {d.short: d.code for d in dtypes.FLOATS}  # from the one table (io/dtypes.py)
ITEMSIZE = {d.short: d.itemsize for d in dtypes.FLOATS}
MB = 1e6


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 2**29 (io/units.py's parser; click's one line when it is not a size)."""
    try:
        return units.parse_size(text)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def default_cache_dir() -> Path:
    """Where the synthetic checkpoints are cached unless --cache-dir says: nanokern-bench-cache/
    in the temporary folder ($TMPDIR, else /tmp), never the current folder nor the repo."""
    import tempfile

    return Path(tempfile.gettempdir()) / "nanokern-bench-cache"


def compile_bytecode() -> None:
    """Compile nanokern's bytecode, as `pip install` does for an installed package. An editable
    install has none, and under PYTHONDONTWRITEBYTECODE Python would compile every module from
    source on every run (about 50 ms of each start-up here), which no installed user pays."""
    import compileall

    compileall.compile_dir(str(REPO_ROOT / "nanokern"), quiet=1)


def machine() -> str:
    """CPU model x core count, no hostname."""
    model = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} x{os.cpu_count()}"


def commit() -> str:
    """Short HEAD, with -dirty when tracked files (other than benchmarks/results/) differ from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             check=True).stdout.strip()
        # the results CSVs themselves do not count: a run appending several rows would mark its own later rows
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":(exclude)benchmarks/results"], cwd=REPO_ROOT,
                               capture_output=True, check=False).returncode != 0
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def utc_timestamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def package_version(name: str) -> str:
    """The installed distribution's version ("" when absent), read from its metadata: nothing is
    imported, so a process that does not otherwise import torch does not pay for it here."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def stamp(device: str, reps: int | str, timestamp: str | None = None) -> dict:
    """The LEADING columns of a row: now (or `timestamp`), this commit, machine, torch and triton."""
    return {"timestamp": timestamp or utc_timestamp(), "commit": commit(), "machine": machine(), "device": device,
            "torch": package_version("torch"), "triton": package_version("triton"), "reps": reps}


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else device


def short_dtype(name: str) -> str:
    """bf16/fp16/fp32/keep, from those or torch's names."""
    return dtypes.ALIASES[name].short if name in dtypes.ALIASES else name


def schema(columns: list[str]) -> list[str]:
    """LEADING, then the benchmark's own columns in their order."""
    return LEADING + [c for c in columns if c not in LEADING]


def migrate_csv(path: str | os.PathLike, columns: list[str] | None = None) -> bool:
    """Rewrite a results CSV under `schema(columns)` (default: its own header's columns), every
    value kept under its column's name; a column the file has and `columns` lacks is kept, at the
    end; a value a row never had is left empty. Returns whether the file changed."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        old = list(reader.fieldnames or [])
        rows = list(reader)
    new = schema(columns if columns is not None else old)
    new += [c for c in old if c not in new]
    if new == old:
        return False
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=new, restval="")
        w.writeheader()
        w.writerows({k: ("" if v is None else v) for k, v in r.items() if k is not None} for r in rows)
    os.replace(tmp, path)
    return True


def append_csv_rows(path: str | os.PathLike, columns: list[str], rows: list[dict]) -> None:
    """Append rows to a results CSV under `schema(columns)`, writing the header first when the
    file is new or empty. A file under another header is first rewritten by migrate_csv. A row
    without torch / triton gets the installed versions; any other column it lacks stays empty."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = schema(columns)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        migrate_csv(path, columns)
        with open(path, newline="") as f:
            columns = next(csv.reader(f))
    versions = {"torch": package_version("torch"), "triton": package_version("triton")}
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, restval="")
        if new:
            w.writeheader()
        w.writerows({**versions, **r} for r in rows)
