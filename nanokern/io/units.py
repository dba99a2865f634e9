"""Sizes for people: one formatter, decimal units (kB, MB, GB = 10^9 bytes), as --max-shard-size
and --size parse them and as the progress bar counts."""

from __future__ import annotations

import re

_UNITS = ("kB", "MB", "GB", "TB", "PB")


def human_bytes(n: int | float) -> str:
    """0 B, 999 B, 1.00 kB, 420 kB, 20.5 MB, 1.07 GB: three significant digits above 1 kB."""
    if n < 1000:
        return f"{int(n)} B"
    v = float(n)
    for unit in _UNITS:
        v /= 1000
        if v < 999.5 or unit == _UNITS[-1]:
            break
    return f"{v:.2f} {unit}" if v < 9.995 else f"{v:.1f} {unit}" if v < 99.95 else f"{v:.0f} {unit}"


_SCALE = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
_SIZE = re.compile(r"([0-9]*\.?[0-9]+)([KMGT]I?B|B)?")


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000, '512MiB' -> 2**29, '1000' -> 1000 (decimal units as huggingface_hub
    parses them, *iB binary, any case); ValueError for anything else (a sign included)."""
    if type(text) is int and text >= 0:
        return text
    m = _SIZE.fullmatch(str(text).strip().upper().replace(" ", ""))
    if not m:
        raise ValueError(f"size {text!r}: use e.g. 20MB, 1GB, 4GB, 1.5GiB")
    return int(float(m.group(1)) * _SCALE[m.group(2) or "B"])


def positive_size(text: str) -> str:
    """text, when it is a size above 0 bytes (a click option's type: the ValueError is its one line)."""
    if parse_size(text) <= 0:
        raise ValueError(f"{text!r}: needs a size above 0 (e.g. 20MB, 5GB)")
    return text
