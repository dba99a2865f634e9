"""Constants, size parsing, machine/commit stamps and CSV appending shared by the benchmarks."""

from __future__ import annotations

import csv
import os
import re
import subprocess
from pathlib import Path

import click

GEN_VERSION = 2  # bump when the generated checkpoint changes: invalidates the cache
REPO_ROOT = Path(__file__).resolve().parents[2]
CSV_COLUMNS = [
    "timestamp", "machine", "device", "commit", "size", "tp", "pp", "dtype", "out_dtype", "workers",
    "backend", "nproc", "floor_s", "nanokern_s", "naive_s", "ratio_floor", "speedup_naive",
    "peak_anon_mb", "baseline_anon_mb", "largest_tensor_mb", "mem_ratio",
    # whole processes (exec to exit, then sync), per direction; older rows end before these
    "direction", "out_tp", "out_pp", "reps", "whole_s", "naive_whole_s", "whole_ratio_floor", "whole_speedup_naive",
    "arch",  # the synthetic family (older rows: llama)
]
ST_DTYPES = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}
DTYPE_ALIASES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # torch's names
ITEMSIZE = {"fp32": 4, "bf16": 2, "fp16": 2}
_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "B": 1}
MB = 1e6


def parse_size(text: str) -> int:
    """'1GB' -> 10**9, '512MiB' -> 2**29 (decimal units like huggingface_hub; *iB binary)."""
    s = str(text).strip().upper().replace(" ", "")
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([KMGT]I?B|B)?", s)
    if not m:
        raise click.BadParameter(f"size {text!r}: use e.g. 20MB, 1GB, 4GB, 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "B"])


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


def device_name(device: str) -> str:
    if device == "cpu":
        return "cpu"
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else device


def short_dtype(name: str) -> str:
    """bf16/fp16/fp32/keep, from those or torch's names."""
    return DTYPE_ALIASES.get(name, name)


def append_csv_rows(path: str | os.PathLike, columns: list[str], rows: list[dict]) -> None:
    """Append rows to a results CSV, writing the header first when the file is new or empty. A
    header that is a prefix of `columns` (a CSV from before columns were added) is extended in
    place; the older rows keep their fields and end where the old header did."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file() or path.stat().st_size == 0
    if not new:
        data = path.read_bytes()
        head, nl, rest = data.partition(b"\n")
        old = head.decode().strip().split(",")
        if old != columns and columns[: len(old)] == old:  # the rows' bytes (CRLF, as csv writes them) kept
            path.write_bytes(",".join(columns).encode() + (b"\r" if head.endswith(b"\r") else b"") + nl + rest)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        if new:
            w.writeheader()
        w.writerows(rows)
