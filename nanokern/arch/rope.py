"""The q/k row permutation between Nanotron's interleaved RoPE layout and HF's half-split one.

Within every q and k head of dimension d, HF row j holds Nanotron row P[j] with
P = [0, 2, 4, ..., d-2, 1, 3, ..., d-1] (pairs (2i, 2i+1) in Nanotron become (i, i+d/2) in HF).
"""

from __future__ import annotations

import numpy as np


def hf_from_nt(d: int) -> np.ndarray:
    """P: HF row j of a head takes Nanotron row P[j]."""
    return np.concatenate([np.arange(0, d, 2), np.arange(1, d, 2)]).astype(np.int64)


def nt_from_hf(d: int) -> np.ndarray:
    """The inverse: Nanotron row t of a head takes HF row Q[t]."""
    return np.argsort(hf_from_nt(d)).astype(np.int64)


def permute_rows(rows: np.ndarray, d: int, table: np.ndarray) -> np.ndarray:
    """Map row indices of a [heads*d, ...] block through a per-head table."""
    return (rows // d) * d + table[rows % d]
