"""Reading a Nanotron parameter's shards by their slice metadata (`Shard.pairs`): which local rows,
columns or entries of each TP rank's file hold which global ones. Every layout the parity
forward could not compute with raises NanokernError here, naming the file."""

from __future__ import annotations

import numpy as np
import torch

from nanokern.errors import NanokernError
from nanokern.formats.nanotron import NtParam, Shard


def by_rank(p: NtParam) -> dict[int, Shard]:
    out: dict[int, Shard] = {}
    for s in p.shards:
        r = 0 if s.tp is None else s.tp
        if r in out:
            raise NanokernError(f"two files for TP rank {r} of {p.name}", s.ref.path)
        out[r] = s
    return out


def _axis_segments(s: Shard, axis: int, full: int, what: str) -> list[tuple[int, int, int]]:
    """(local start, global start, length) along `axis` of a 2-D shard sliced along that axis
    only, checking that every pair spans all `full` entries of the other axis."""
    other = 1 - axis
    segs = []
    for local, glob in s.pairs:
        lo, go = local[axis], glob[axis]
        if local[other] != (0, full) or glob[other] != (0, full) or lo[1] - lo[0] != go[1] - go[0]:
            raise NanokernError(f"expected {what} over all {full} {'columns' if axis == 0 else 'rows'}, got pair "
                                f"{tuple(local)} -> {tuple(glob)}", s.ref.path)
        segs.append((lo[0], go[0], lo[1] - lo[0]))
    return segs


def row_segments(s: Shard, full_cols: int) -> list[tuple[int, int, int]]:
    """(local row start, global row start, rows) of a dim-0-sharded 2-D shard, checking that
    every pair spans all columns."""
    return _axis_segments(s, 0, full_cols, "a row slice")


def vec_segments(s: Shard) -> list[tuple[int, int, int]]:
    """(local start, global start, length) of a 1-D sharded vector (a bias)."""
    segs = []
    for box in s.pairs:
        (lo,), (go,) = box
        if lo[1] - lo[0] != go[1] - go[0]:
            raise NanokernError(f"expected 1-D slices of equal length, got pair {lo} -> {go}", s.ref.path)
        segs.append((lo[0], go[0], lo[1] - lo[0]))
    return segs


def col_segments(s: Shard, full_rows: int) -> list[tuple[int, int, int]]:
    return _axis_segments(s, 1, full_rows, "a column slice")


def local_index(segs: list[tuple[int, int, int]], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Local and global indices (sorted by global) of the part of the segments inside [lo, hi)."""
    loc, glo = [], []
    for l0, g0, n in segs:
        a, b = max(g0, lo), min(g0 + n, hi)
        if a < b:
            glo.append(np.arange(a, b))
            loc.append(np.arange(a, b) - g0 + l0)
    if not glo:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    g = np.concatenate(glo)
    order = np.argsort(g, kind="stable")
    return np.concatenate(loc)[order].astype(np.int64), g[order].astype(np.int64)


def take_rows(t: torch.Tensor, idx: np.ndarray, dim: int) -> torch.Tensor:
    """t restricted to idx along dim; the tensor itself when idx is the identity."""
    if len(idx) == t.shape[dim] and np.array_equal(idx, np.arange(len(idx))):
        return t
    return t.index_select(dim, torch.as_tensor(idx, device=t.device))


def heads(glob: np.ndarray, d: int, offset: int, what: str, path: str) -> list[int]:
    """Head indices of global rows that must form whole heads of dim d (after offset)."""
    rel = glob - offset
    blocks = rel.reshape(-1, d) if len(rel) % d == 0 else None
    if blocks is None or (blocks[:, 0] % d).any() or (blocks != blocks[:, :1] + np.arange(d)).any():
        raise NanokernError(f"{what} rows {ranges(glob)} of this shard are not whole heads of dim {d}", path)
    return [int(x) // d for x in blocks[:, 0]]


def ranges(idx) -> str:
    idx = [int(x) for x in idx]
    if not idx:
        return "[]"
    parts, start, prev = [], idx[0], idx[0]
    for x in idx[1:]:
        if x != prev + 1:
            parts.append(f"{start}:{prev + 1}")
            start = x
        prev = x
    parts.append(f"{start}:{prev + 1}")
    return "[" + ", ".join(parts) + "]"
