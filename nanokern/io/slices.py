"""Nanotron's shard metadata: `local_global_slices_pairs` and `unsharded_shape`.

Encoding (nanotron `SlicesPair`): a slice is "start,stop,step" with None spelled out; the
slices of all dims are joined by "|"; local and global by "#"; pairs by ";". Semantics:
unsharded[global] = shard[local]. `unsharded_shape` is str(tuple), possibly with np.int64(N).
"""

from __future__ import annotations

import math
import re

Range = tuple[int, int]  # [start, stop)
Pair = tuple[tuple[Range, ...], tuple[Range, ...]]  # (local ranges, global ranges), one per dim

_INT = r"-?[0-9]+"  # ASCII digits only: no "+5", "1_000" or non-ASCII digits, which int() would take
_NP_INT = re.compile(rf"^np\.int64\(\s*({_INT})\s*\)$")
_PLAIN_INT = re.compile(rf"^{_INT}$")


class SliceFormatError(ValueError):
    pass


def _int(text: str) -> int | None:
    """A plain or np.int64(...) integer, or None if the text is neither."""
    t = text.strip()
    m = _PLAIN_INT.match(t) or _NP_INT.match(t)
    if not m:
        return None
    return int(m.group(1) if m.re is _NP_INT else m.group(0))


def parse_unsharded_shape(text: str) -> tuple[int, ...]:
    """str(tuple(shape)) as Nanotron writes it: "(6144, 4096)", "(np.int64(6144), 4096)", "(4096,)"."""
    if not isinstance(text, str):
        raise SliceFormatError(f"unsharded_shape {text!r} is not a string")
    s = text.strip()
    if not (s.startswith("(") and s.endswith(")")):
        raise SliceFormatError(f"unsharded_shape {text!r} is not a tuple")
    body = s[1:-1].strip()
    if not body:
        raise SliceFormatError(f"unsharded_shape {text!r} is empty")
    parts = [p.strip() for p in body.split(",")]
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()  # the trailing comma of a 1-tuple, "(4096,)"
    dims = []
    for part in parts:
        v = _int(part)
        if v is None:
            raise SliceFormatError(f"unsharded_shape {text!r}: {part!r} is not an integer")
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
    vals: list[int | None] = []
    for p in (p.strip() for p in parts):
        if p == "None":
            vals.append(None)
        elif _PLAIN_INT.match(p):
            vals.append(int(p))
        else:
            raise SliceFormatError(f"{what} slice {text!r} is not made of integers or None")
    start, stop, step = vals
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


def check_tiling(boxes: list[tuple[Range, ...]], shape: tuple[int, ...], what: str) -> None:
    """Boxes (each inside `shape`) must cover every element of `shape` exactly once."""
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if box_volume(boxes[i]) and box_volume(boxes[j]) and boxes_overlap(boxes[i], boxes[j]):
                raise SliceFormatError(f"{what}: slices {_show(boxes[i])} and {_show(boxes[j])} overlap")
    total = sum(box_volume(b) for b in boxes)
    need = math.prod(shape)
    if total != need:
        raise SliceFormatError(f"{what}: slices cover {total} of the {need} elements of shape {list(shape)}")


def _show(box: tuple[Range, ...]) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in box) + "]"
