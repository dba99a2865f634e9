"""Streaming HF tensors out of the grid's shards: the plan's tensors one after the other, each
made from its units (gathered over TP, broadcast over PP: gather.py) by the plan's own pieces,
cast by the same fused gather-cast kernel the file converter runs (execute/fill.py on the host,
the torch op on a GPU: the "cuda" or "triton" backend).

Memory per rank: the output buffer(s) (for `save_hf` one or two of the largest HF tensor in
the output dtype; for `hf_weights` see pool.py; for `hf_buckets` its buckets), plus the units
alive at once (a unit is freed after the last tensor that reads it; the schedule comes from the
plan, the same on every rank).
"""

from __future__ import annotations

from nanokern.execute.fill import fill_rows
from nanokern.live.gather import Budget, Units
from nanokern.live.layout import LivePlan


def out_view(buf, t):
    """Tensor t's rows as a view of the byte buffer `buf`: [rows, cols] in t's dtype."""
    rows, cols = t.shape2d
    return buf[: t.nbytes].view(t.dtype.torch).view(rows, cols)


def storage(x):
    """A CPU tensor's bits as numpy (bfloat16 as uint16), sharing memory."""
    import torch

    return x.view(torch.int16).numpy().view("<u2") if x.dtype == torch.bfloat16 else x.numpy()


def fill(t, out, units: Units, backend: str) -> None:
    """out [rows, cols] <- tensor t, every piece (zeros where none reads: Qwen2's absent biases)."""
    rows, cols = t.shape2d
    if sum(p.nrows * p.ncols for p in t.pieces) != rows * cols:
        out.zero_()
    if out.device.type == "cpu":
        fill_rows(t, 0, rows, storage(out), units, backend)
        return
    _fill_device(t, out, units, backend)


def _fill_device(t, out, units: Units, backend: str) -> None:
    """The file converter's torch path (execute/fill.py), on device tensors."""
    import torch

    from nanokern.ops import gather_cast

    for p in t.pieces:
        src = units.tensor(p.ref)
        if p.transpose:
            src = src.t()
        src = src[:, p.col0 : p.col0 + p.ncols]
        dst = out[p.dst_row0 : p.dst_row0 + p.nrows, p.dst_col0 : p.dst_col0 + p.ncols]
        rows = None if p.rows is None else torch.from_numpy(p.rows).to(src.device)
        if rows is None:
            src = src[p.row0 : p.row0 + p.nrows]
        elif p.transpose:
            src, rows = src.index_select(0, rows), None
        if not src.is_contiguous() and src.stride(1) != 1:
            src = src.contiguous()  # a transposed expert: one [out, in] copy
        gather_cast(src, rows, dst, backend=backend)


def produce(lp: LivePlan, sh, g, order, wanted, backend: str, device, budget: Budget, nbuf: int = 1, before=None, dest=None,
            place=None):
    """For each tensor of `order` (plan OutTensors, the same list on every rank): gather its
    units (every rank, collectively), then, where wanted(t) (and before(), called first, says
    go on), fill an output buffer and yield (t, view). The buffer: place(t) (a uint8 buffer of
    at least t.nbytes, the caller's), or one of `nbuf` reused buffers of the largest wanted
    tensor, whose view stays valid until the generator is resumed `nbuf` times. dest(t): the
    grid index of the one rank that wants t (its units go to that rank only), or None: every
    rank gets every unit."""
    units = Units(lp, sh, g, order, device, budget, dest)
    budget.bound_unit = units.largest
    size = max((t.nbytes for t in order if wanted(t)), default=0) if place is None else 0
    bufs = [budget.alloc(size, device) for _ in range(nbuf if size else 0)]
    k = 0
    try:
        for i, t in enumerate(order):
            units.step(i)
            if wanted(t) and (before is None or before()):
                out = out_view(place(t) if place is not None else bufs[k % nbuf], t)
                k += 1
                fill(t, out, units, backend)
                yield t, out
                del out  # (no reference of ours outlives the step: see pool.py)
            units.release(i)
    finally:
        units.close()
        for b in bufs:
            budget.free(b)
