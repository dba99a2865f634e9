"""Nanotron's shard metadata: `local_global_slices_pairs` and `unsharded_shape`.

Encoding (nanotron `SlicesPair`): a slice is "start,stop,step" with None spelled out; the
slices of all dims are joined by "|"; local and global by "#"; pairs by ";". Semantics:
unsharded[global] = shard[local]. `unsharded_shape` is str(tuple), possibly with np.int64(N).
"""

from __future__ import annotations

import re

Range = tuple[int, int]  # [start, stop)
Pair = tuple[tuple[Range, ...], tuple[Range, ...]]  # (local ranges, global ranges), one per dim

_NP_INT = re.compile(r"^np\.int64\((-?\d+)\)$")


class SliceFormatError(ValueError):
    pass


def parse_unsharded_shape(text: str) -> tuple[int, ...]:
    s = text.strip()
    if not (s.startswith("(") and s.endswith(")")):
        raise SliceFormatError(f"unsharded_shape {text!r} is not a tuple")
    body = s[1:-1].strip()
    if not body:
        raise SliceFormatError(f"unsharded_shape {text!r} is empty")
    dims = []
    for part in body.split(","):
        part = part.strip()
        if not part:
            continue
        m = _NP_INT.match(part)
        try:
            v = int(m.group(1) if m else part)
        except ValueError:
            raise SliceFormatError(f"unsharded_shape {text!r}: {part!r} is not an integer") from None
        if v < 0:
            raise SliceFormatError(f"unsharded_shape {text!r} has a negative size")
        dims.append(v)
    return tuple(dims)


def format_unsharded_shape(shape: tuple[int, ...]) -> str:
    return str(tuple(int(s) for s in shape))


def _parse_slice(text: str, size: int, what: str) -> Range:
    parts = text.split(",")
    if len(parts) != 3:
        raise SliceFormatError(f"{what} slice {text!r} must be start,stop,step")
    try:
        start, stop, step = (None if p.strip() == "None" else int(p) for p in parts)
    except ValueError:
        raise SliceFormatError(f"{what} slice {text!r} is not made of integers or None") from None
    if step not in (None, 1):
        raise SliceFormatError(f"{what} slice {text!r}: only step 1 is supported")
    start = 0 if start is None else start
    stop = size if stop is None else stop
    if not (0 <= start <= stop <= size):
        raise SliceFormatError(f"{what} slice {text!r} is outside [0, {size}]")
    return (start, stop)


def parse_pairs(text: str, local_shape: tuple[int, ...], global_shape: tuple[int, ...]) -> list[Pair]:
    """Parse and check against the shapes: each pair's local and global boxes have equal sizes."""
    if len(local_shape) != len(global_shape):
        raise SliceFormatError(f"shard has {len(local_shape)} dims but unsharded_shape has {len(global_shape)}")
    pairs: list[Pair] = []
    if not text.strip():
        raise SliceFormatError("local_global_slices_pairs is empty")
    for chunk in text.split(";"):
        if chunk.count("#") != 1:
            raise SliceFormatError(f"slice pair {chunk!r} must be local#global")
        loc_s, glob_s = chunk.split("#")
        loc_parts, glob_parts = loc_s.split("|"), glob_s.split("|")
        if len(loc_parts) != len(local_shape) or len(glob_parts) != len(global_shape):
            raise SliceFormatError(f"slice pair {chunk!r} does not have {len(local_shape)} dims")
        loc = tuple(_parse_slice(p, n, "local") for p, n in zip(loc_parts, local_shape))
        glo = tuple(_parse_slice(p, n, "global") for p, n in zip(glob_parts, global_shape))
        for (a, b), (c, d) in zip(loc, glo):
            if b - a != d - c:
                raise SliceFormatError(f"slice pair {chunk!r}: local and global sizes differ")
        pairs.append((loc, glo))
    return pairs


def format_pairs(pairs: list[Pair], split_dim: int, chunked: bool) -> str:
    """Nanotron's encoding: the split dim written explicitly (locally only for chunked params,
    i.e. qkv_proj and gate_up_proj), every other dim as None,None,None."""
    full = "None,None,None"

    def fmt(box, explicit):
        return "|".join(f"{a},{b},None" if (d == split_dim and explicit) else full for d, (a, b) in enumerate(box))

    return ";".join(f"{fmt(loc, chunked)}#{fmt(glo, True)}" for loc, glo in pairs)


def box_volume(box: tuple[Range, ...]) -> int:
    v = 1
    for a, b in box:
        v *= b - a
    return v


def boxes_overlap(x: tuple[Range, ...], y: tuple[Range, ...]) -> bool:
    return all(max(a, c) < min(b, d) for (a, b), (c, d) in zip(x, y))
