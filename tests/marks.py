"""The fast loop's selection: parametrized cases marked slow except the ones the loop keeps (one
per behaviour: a fixture per family, one backend where the kernel tests cover every backend).
CI runs every case."""

from __future__ import annotations

import pytest


def slow_except(cases, fast, unpack: bool = True) -> list:
    """pytest params of `cases` (values, or tuples for several argnames; unpack=False: tuples
    are single values), each marked slow unless it is in `fast`."""
    fast = set(fast)
    return [pytest.param(*(c if unpack and isinstance(c, tuple) else (c,)), marks=() if c in fast else pytest.mark.slow)
            for c in cases]
