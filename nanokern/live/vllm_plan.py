"""Which HF tensors of a live export are a plain `torch.chunk` of what the TP ranks hold, read
off the HF plan's pieces alone (no tensor data): the layout a vLLM WeightSource declares.

Each HF tensor of the plan is filled by pieces, each reading one TP rank's shard (a sharded
Nanotron parameter) or a copy every TP rank holds (a replicated one: norms, router, experts).
The tensor is a plain chunk along HF dim d over T TP ranks when T divides its size there and
every piece of TP rank r's shard lands inside chunk r: then rank r builds chunk r from its own
memory (the per-head RoPE row permutation is a row gather inside its own rows), with no
communication, and the chunks concatenated in TP order are the export. Pieces of replicated
parameters are cut at the chunk bounds (every rank holds them). An FP8 weight is a chunk
when, besides, each chunk holds whole 128 x 128 blocks (its scales then split the same way).
Anything else (a vocab trimmed below the padded one, a fused piece that crosses a chunk bound,
FP8 blocks across a chunk bound) is declared replicated: its owners gather it over TP, as
`hf_weights` does.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from nanokern.errors import NanokernError
from nanokern.live.layout import ParamInfo, parse_ref
from nanokern.plan import OutTensor, Piece
from nanokern.plan.fp8 import BLOCK

SHARD, LOCAL, GATHER = "shard", "local", "gather"  # a chunk per rank / whole on each rank from its own copy / gathered
_LAYER = re.compile(r"^(?:model\.)?layers\.(\d+)\.")


@dataclass
class Placed:
    t: OutTensor  # the plan's tensor
    stage: int  # the PP rank whose TP group owns it
    kind: str  # SHARD, LOCAL or GATHER
    dim: int | None  # the HF dim it is chunked along (SHARD)


def _rank(p: Piece, params: dict[str, ParamInfo]) -> int | None:
    """The TP rank whose memory the piece reads, or None: every TP rank holds it."""
    name, tp = parse_ref(p.ref.path)
    return tp if params[name].sharded else None


def _span(p: Piece, dim: int) -> tuple[int, int]:
    """The piece's extent in the output's 2-D view: rows (dim 0) or columns (dim 1)."""
    return (p.dst_row0, p.dst_row0 + p.nrows) if dim == 0 else (p.dst_col0, p.dst_col0 + p.ncols)


def _step(t: OutTensor, dim: int, tp: int) -> int | None:
    """Size of one TP chunk along the 2-D view's axis `dim` (HF dim 0: rows, every rest row
    included; HF dim 1 of a 2-D tensor: columns), or None where T does not divide it."""
    if dim >= len(t.shape) or (dim == 1 and len(t.shape) != 2) or t.shape[dim] % tp:
        return None
    return t.shape2d[dim] // tp


def chunk_dim(t: OutTensor, params: dict[str, ParamInfo], tp: int) -> int | None:
    """The HF dim along which t is a plain chunk of the TP ranks' memory (0 tried first), or
    None. Every rank must be able to build its chunk from its own memory alone; an FP8 weight's
    chunk must hold whole 128 x 128 blocks (then its blocks, and scales, are the tensor's)."""
    for dim in (0, 1):
        step = _step(t, dim, tp)
        if step is None or (t.quant is not None and (t.shape[dim] // tp) % BLOCK):
            continue
        ok = True
        for p in t.pieces:
            r = _rank(p, params)
            lo, hi = _span(p, dim)
            if r is not None and not (r * step <= lo and hi <= (r + 1) * step):
                ok = False
                break
        if ok:
            return dim
    return None


def _stages(order: list[OutTensor], params: dict[str, ParamInfo]) -> list[int]:
    """The PP stage of each tensor: the one holding what its pieces read. A tensor with no
    piece (a zero bias the Nanotron layer does not have) goes with the other tensors of its
    decoder layer."""
    stage: list[int | None] = []
    by_layer: dict[int, int] = {}
    for t in order:
        owners = {params[parse_ref(p.ref.path)[0]].owner for p in t.pieces}
        if len(owners) > 1:
            raise NanokernError(f"{t.name} reads parameters held by several PP stages ({sorted(owners)})")
        stage.append(owners.pop() if owners else None)
        m = _LAYER.match(t.name)
        if m and stage[-1] is not None:
            by_layer.setdefault(int(m.group(1)), stage[-1])
    out: list[int] = []
    named = {t.name: s for t, s in zip(order, stage)}
    for t, s in zip(order, stage):
        if s is None and t.scale_of is not None:  # an FP8 weight's scales go with the weight
            s = named[t.scale_of]
        if s is None:
            m = _LAYER.match(t.name)
            if not m or int(m.group(1)) not in by_layer:
                raise NanokernError(f"{t.name}: no piece and no decoder layer to place it with")
            s = by_layer[int(m.group(1))]
        out.append(s)
    return out


def place(order: list[OutTensor], params: dict[str, ParamInfo], tp: int) -> list[Placed]:
    """Every tensor of `order` with its stage and kind. With one TP rank every tensor is whole
    on its only owner (LOCAL: nothing to split, nothing to gather). An FP8 weight's scales
    (`weight_scale_inv`, right after it) are placed as the weight: [rows/128, cols/128], they
    split where the weight splits."""
    out: list[Placed] = []
    named: dict[str, Placed] = {}
    for t, stage in zip(order, _stages(order, params)):
        dim = chunk_dim(t, params, tp) if tp > 1 and t.quant != "scale_inv" else None
        if t.quant == "scale_inv":  # its weight's scales: placed as the weight (filled with it)
            w = named[t.scale_of]
            out.append(Placed(t, stage, w.kind, w.dim))
        elif dim is not None:
            out.append(Placed(t, stage, SHARD, dim))
        elif tp == 1 or all(_rank(p, params) is None for p in t.pieces):
            out.append(Placed(t, stage, LOCAL, None))
        else:
            out.append(Placed(t, stage, GATHER, None))
        named[t.name] = out[-1]
    return out


def _clip(p: Piece, dim: int, lo: int, hi: int) -> Piece | None:
    """The part of piece p inside [lo, hi) along the 2-D axis dim, moved to start at lo."""
    a, b = _span(p, dim)
    a, b = max(a, lo), min(b, hi)
    if a >= b:
        return None
    k = a - _span(p, dim)[0]
    if dim == 0:
        rows = None if p.rows is None else p.rows[k : k + b - a]
        return dataclasses.replace(p, rows=rows, row0=p.row0 + k if p.rows is None else p.row0, nrows=b - a, dst_row0=a - lo)
    return dataclasses.replace(p, col0=p.col0 + k, ncols=b - a, dst_col0=a - lo)


def local_tensor(pl: Placed, tp_rank: int, tp: int, params: dict[str, ParamInfo]) -> OutTensor:
    """TP rank tp_rank's chunk of a SHARD tensor (LOCAL: the whole tensor) as a plan tensor of
    its own: the pieces that land in the chunk, cut at its bounds and moved to its origin."""
    t = pl.t
    if pl.kind == LOCAL:
        return t
    if pl.kind != SHARD:
        raise AssertionError(f"plan error: {t.name} is not built locally")
    step = t.shape2d[pl.dim] // tp
    lo, hi = tp_rank * step, (tp_rank + 1) * step
    pieces = []
    for p in t.pieces:
        c = _clip(p, pl.dim, lo, hi)
        if c is None:
            continue
        r = _rank(p, params)
        if r is not None and r != tp_rank:
            raise AssertionError(f"plan error: {t.name}: a piece of TP rank {r} in the chunk of rank {tp_rank}")
        pieces.append(c)
    shape = list(t.shape)
    shape[pl.dim] //= tp
    return dataclasses.replace(t, shape=tuple(shape), sources=[], pieces=pieces)
