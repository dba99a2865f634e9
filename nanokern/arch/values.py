"""Checks of config values, shared by the HF and Nanotron config readers."""

from __future__ import annotations

import math


def pos_int(x) -> bool:
    """A positive int (not a bool, not a float)."""
    return type(x) is int and x > 0


def number(x) -> bool:
    """A finite int or float (not a bool)."""
    return type(x) in (int, float) and math.isfinite(x)
