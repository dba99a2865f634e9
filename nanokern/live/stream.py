"""Streaming HF tensors out of the grid's shards: the plan's tensors one after the other, each
made from its units (gathered over TP, broadcast over PP: gather.py) by the plan's own pieces,
cast by the same fused gather-cast kernel the file converter runs (execute/fill.py on the host,
the torch op on a GPU: the "cuda" or "triton" backend). An FP8 export's weights (plan/fp8.py) are
quantized by the file converter's fused gather-quantize (execute/quant.py) straight from the
units, their scales kept for the `weight_scale_inv` tensor that follows each of them.

Memory per rank: the output buffer(s) (for `save_hf` one or two of the largest HF tensor in
the output dtype; for `hf_weights` see pool.py; for `hf_buckets` its buckets), plus the units
alive at once (a unit is freed after the last tensor that reads it; the schedule comes from the
plan, the same on every rank).
"""

from __future__ import annotations

import numpy as np

from nanokern.errors import NanokernError
from nanokern.execute.fill import _spans, fill_rows
from nanokern.execute.quant import fill_quant, fill_quant_tensor
from nanokern.live.gather import Budget, Units
from nanokern.live.layout import LivePlan


def out_view(buf, t):
    """Tensor t's rows as a view of the byte buffer `buf`: [rows, cols] in t's dtype."""
    rows, cols = t.shape2d
    return buf[: t.nbytes].view(t.dtype.torch).view(rows, cols)


def storage(x):
    """A CPU tensor's bits as numpy (bfloat16 as uint16, float8_e4m3fn as uint8), sharing memory."""
    import torch

    if x.dtype == torch.bfloat16:
        return x.view(torch.int16).numpy().view("<u2")
    return x.view(torch.uint8).numpy() if x.dtype == torch.float8_e4m3fn else x.numpy()


def fill(t, out, units: Units, backend: str) -> None:
    """out [rows, cols] <- tensor t, every piece (zeros where none reads: Qwen2's absent biases)."""
    rows, cols = t.shape2d
    if t.quant is not None:
        raise NanokernError(f"{t.name}: FP8 ({t.quant}) tensors are made by fill_quantized (hf_weights, hf_buckets, save_hf)")
    if sum(p.nrows * p.ncols for p in t.pieces) != rows * cols:
        out.zero_()
    if out.device.type == "cpu":
        fill_rows(t, 0, rows, storage(out), units, backend)
        return
    _fill_device(t, out, units, backend)


def fill_quantized(t, out, units: Units, backend: str, pending: dict) -> None:
    """out <- an FP8 weight t, its float32 scales left in pending[t.name]; or t its scale_inv:
    out <- those scales (the plan puts it right after its weight)."""
    if t.quant == "scale_inv":
        out.copy_(pending.pop(t.scale_of))
    elif out.device.type == "cpu":
        pending[t.name] = _quantize_host(t, out, units, backend)
    else:
        pending[t.name] = _quantize_device(t, out, units, backend)


def _quantize_host(t, out, units: Units, backend: str):
    """The file converter's fill_quant (execute/quant.py) into a CPU tensor; returns the scales."""
    import torch

    rows, cols = t.shape2d
    scales = np.zeros((rows // 128, cols // 128), np.float32)
    fill_quant(t, 0, rows, storage(out), scales, units, backend)
    return torch.from_numpy(scales)


def _quantize_device(t, out, units: Units, backend: str):
    """The same bands through the torch op on out's device (execute/quant.py fill_quant_tensor)."""
    import torch

    rows, cols = t.shape2d
    scales = torch.zeros(rows // 128, cols // 128, dtype=torch.float32, device=out.device)
    band = lambda t, b0, scratch: _fill_device(t, scratch, units, backend, b0, b0 + 128)  # noqa: E731
    fill_quant_tensor(t, out, scales, units.tensor, band, backend)
    return scales


def _fill_device(t, out, units: Units, backend: str, r0: int = 0, r1: int | None = None) -> None:
    """Rows [r0, r1) of t (all: r1 None) into out (its [r1 - r0, cols]): the file converter's
    torch path (execute/fill.py), on device tensors."""
    import torch

    from nanokern.ops import gather_cast

    for p, a, b, k0, k1 in _spans(t, r0, t.shape2d[0] if r1 is None else r1):
        src = units.tensor(p.ref)
        if p.transpose:
            src = src.t()
        src = src[:, p.col0 : p.col0 + p.ncols]
        dst = out[a - r0 : b - r0, p.dst_col0 : p.dst_col0 + p.ncols]
        rows = None if p.rows is None else torch.from_numpy(np.ascontiguousarray(p.rows[k0:k1])).to(src.device)
        if rows is None:
            src = src[p.row0 + k0 : p.row0 + k1]
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
    pending: dict = {}  # an FP8 weight's scales, until its scale_inv tensor
    size = max((t.nbytes for t in order if wanted(t)), default=0) if place is None else 0
    bufs = [budget.alloc(size, device) for _ in range(nbuf if size else 0)]
    k = 0
    try:
        for i, t in enumerate(order):
            units.step(i)
            if wanted(t) and (before is None or before()):
                out = out_view(place(t) if place is not None else bufs[k % nbuf], t)
                k += 1
                if t.quant is None:
                    fill(t, out, units, backend)
                else:
                    fill_quantized(t, out, units, backend, pending)
                yield t, out
                del out  # (no reference of ours outlives the step: see pool.py)
            units.release(i)
    finally:
        units.close()
        for b in bufs:
            budget.free(b)
