"""Sizes for people: one formatter, decimal units (kB, MB, GB = 10^9 bytes), as --max-shard-size
and --size parse them and as the progress bar counts."""

from __future__ import annotations

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
