"""One parameter's shard files: reading each file's slice metadata, and checking that the set of
files is one layout's, one file per TP rank, and that their global slices tile the unsharded
tensor (no hole, no overlap)."""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.formats.nanotron import layout as L
from nanokern.io import dtypes
from nanokern.io.dtypes import DType
from nanokern.io.safetensors import TensorRef, read_header
from nanokern.io.slices import (
    SliceFormatError,
    box_volume,
    boxes_overlap,
    check_tiling,
    parse_pairs,
    parse_unsharded_shape,
)

@dataclass
class Shard:
    """One file of a parameter: which slice of the unsharded tensor it holds."""

    ref: TensorRef
    pairs: list  # [(local box, global box)]
    tp: int | None
    tp_size: int | None
    pp: int | None
    pp_size: int | None
    bad_naming: bool = False
    gshape: tuple[int, ...] = ()  # unsharded_shape (the stored shape for a non-sharded file)

    @property
    def dtype(self) -> DType:
        return self.ref.dtype


@dataclass
class NtParam:
    name: str
    shape: tuple[int, ...]
    dtype: DType
    shards: list[Shard] = field(default_factory=list)


def _read_shard(path: Path, info: dict) -> Shard:
    h = read_header(path)
    if list(h.tensors) != ["data"]:
        raise NanokernError(f"expected exactly one tensor named 'data', found {sorted(h.tensors)}", path)
    ref = h.tensors["data"]
    if ref.dtype not in dtypes.FLOATS:
        raise NanokernError(f"unsupported dtype {ref.dtype} (supported: fp32, bf16, fp16)", path)
    full_box = tuple((0, n) for n in ref.shape)
    if not info["sharded"]:
        return Shard(ref, [(full_box, full_box)], None, None, None, None, False, ref.shape)
    md = h.metadata
    missing = [k for k in ("local_global_slices_pairs", "unsharded_shape") if k not in md]
    if missing:
        raise NanokernError(f"sharded file without {' and '.join(map(repr, missing))} in its metadata", path)
    if "version" in md and not _VERSION.match(md["version"]):
        raise NanokernError(f"bad shard metadata: version {md['version'][:40]!r} is not a version number", path)
    try:
        gshape = parse_unsharded_shape(md["unsharded_shape"])
        pairs = parse_pairs(md["local_global_slices_pairs"], ref.shape, gshape)
        check_tiling([loc for loc, _ in pairs], ref.shape, f"local slices of the stored {list(ref.shape)} tensor")
    except SliceFormatError as e:
        raise NanokernError(f"bad shard metadata: {e}", path) from None
    return Shard(ref, pairs, info["tp"], info["tp_size"], info["pp"], info["pp_size"], info["bad_naming"], gshape)


_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _layout(s: Shard) -> tuple[int, int] | None:
    return None if s.tp_size is None else (s.tp_size, s.pp_size)


def _show_layout(lay: tuple[int, int] | None) -> str:
    return "non-sharded" if lay is None else f"TP {lay[0]} x PP {lay[1]}"


def _check_shard_set(p: NtParam, where: Path, layout: tuple[int, int] | None) -> None:
    """One file per TP rank, all from the checkpoint's layout: catches stale files left by an
    earlier layout in the same folder and missing TP shards with a message saying so."""
    names = lambda shards: ", ".join(sorted(os.path.basename(s.ref.path) for s in shards))  # noqa: E731
    lays = {_layout(s) for s in p.shards}
    if len(lays) > 1:
        keep = layout if layout in lays else Counter(_layout(s) for s in p.shards).most_common(1)[0][0]
        stale = [s for s in p.shards if _layout(s) != keep]
        raise NanokernError(
            f"files of {p.name} from different layouts in one folder: {names(stale)} ({_show_layout(_layout(stale[0]))}) "
            f"beside {_show_layout(keep)} shards; stale file(s) from another layout?",
            where,
        )
    lay = lays.pop()
    if lay is None:
        if len(p.shards) > 1:  # cannot happen with one file name per folder, kept for safety
            raise NanokernError(f"several non-sharded files for {p.name}: {names(p.shards)}", where)
        return
    tp_size, pp_size = lay
    for s in p.shards:
        if not (s.tp < tp_size and s.pp < pp_size):
            raise NanokernError("rank out of range in the file name", s.ref.path)
    by_rank: dict[int, list[Shard]] = {}
    for s in p.shards:
        by_rank.setdefault(s.tp, []).append(s)
    for r, group in sorted(by_rank.items()):
        if len(group) > 1:
            raise NanokernError(f"{len(group)} files for TP rank {r} of {p.name}: {names(group)}", where)
    lost = [r for r in range(tp_size) if r not in by_rank]
    if lost:
        pp = p.shards[0].pp
        expect = where / os.path.basename(L.param_path(p.name, pp, pp_size, lost[0], tp_size))
        raise NanokernError(
            f"missing TP shard(s) {lost} of {tp_size} for {p.name} (found {names(p.shards)})", expect
        )


def _check_coverage(p: NtParam, where: Path) -> None:
    """The shards' global slices must tile the unsharded tensor: no overlap, no hole."""
    boxes = [(glo, os.path.basename(s.ref.path)) for s in p.shards for _, glo in s.pairs]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes_overlap(boxes[i][0], boxes[j][0]):
                (x, fx), (y, fy) = boxes[i], boxes[j]
                raise NanokernError(f"shards of {p.name} overlap: {_box(x)} of {fx} and {_box(y)} of {fy}", where)
    total = sum(box_volume(b) for b, _ in boxes)
    need = math.prod(p.shape)
    if total != need:
        raise NanokernError(
            f"shards of {p.name} leave holes: their slices cover {total} of the {need} elements "
            f"of the unsharded {list(p.shape)} tensor ({len(p.shards)} file(s))",
            where,
        )


def _box(box) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in box) + "]"


def _agree(shards: list[Shard], attr: str, expected, what: str):
    """The value every shard of a parameter has for `attr`; when they differ, name the file(s)
    that differ from `expected` (or from the majority)."""
    values = Counter(getattr(s, attr) for s in shards)
    if len(values) == 1:
        return next(iter(values))
    good = expected if expected in values else values.most_common(1)[0][0]
    bad = next(s for s in shards if getattr(s, attr) != good)
    show = lambda v: list(v) if isinstance(v, tuple) else str(v)  # noqa: E731
    raise NanokernError(f"{what} {show(getattr(bad, attr))} disagrees with its sibling shards ({show(good)})", bad.ref.path)

