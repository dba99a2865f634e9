"""Filling an FP8 weight (plan/fp8.py) band by band: rows [r0, r1), multiples of 128, quantized
per 128 x 128 block by the fused gather-quantize kernel (ops/fp8_quant.py), with the band's row of
scales written into `scales` (the tensor's [rows/128, cols/128] float32 scale_inv, written after
the weight from the same array).

Bands that one piece covers whole (all columns, rows read straight, as in any TP shard of 128 rows
or more, RoPE-permuted or not) go through the kernel straight from the memory-mapped source: no
copy is made. A band whose rows come from several pieces (two TP shards meeting inside a block) or
from a transposed read (Nanotron's input-major experts) is first gathered into a float32 scratch of
128 rows by gather_cast (exact: widening), then quantized from there: the one bounded buffer.
t.scale_fmt "ue8m0": power-of-two scales (ops/fp8_quant.py), the same kernels.

`bands` is that walk; `fill_quant` runs it on the writer's numpy buffers, `fill_quant_tensor` on
torch tensors on any device (nanokern.live on a GPU), with the same kernel, so the same bits.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nanokern.execute.fill import Sources, fill_rows, uses_host
from nanokern.io import dtypes
from nanokern.ops import host
from nanokern.plan.pieces import Fp8Ref

BLOCK = 128


def _whole(t, p, a: int, b: int) -> bool:
    """Whether piece p alone makes rows [a, b) of t (every column, no transpose) straight from
    its source's values (an FP8 source's bytes are not values: its rows are dequantized into the
    scratch by fill_rows, then quantized again)."""
    return (not p.transpose and not isinstance(p.ref, Fp8Ref) and p.dst_col0 == 0 and p.ncols == t.shape2d[1]
            and p.dst_row0 <= a and b <= p.dst_row0 + p.nrows)


def bands(t, r0: int, r1: int):
    """(b0, b1, piece, rows): rows [b0, b1) of t (multiples of 128, within [r0, r1)) made by one
    piece alone, which reads them straight (rows None: its rows p.row0 + b0 - p.dst_row0 onwards;
    else that row map), or piece None: one band of 128 rows to gather into a float32 scratch."""
    b0 = r0
    while b0 < r1:
        p = next((p for p in t.pieces if _whole(t, p, b0, b0 + BLOCK)), None)
        if p is None:
            yield b0, b0 + BLOCK, None, None
            b0 += BLOCK
            continue
        b1 = b0 + BLOCK  # as many whole bands as this piece makes
        while b1 + BLOCK <= r1 and _whole(t, p, b1, b1 + BLOCK):
            b1 += BLOCK
        k0, k1 = b0 - p.dst_row0, b1 - p.dst_row0
        yield b0, b1, p, None if p.rows is None else np.ascontiguousarray(p.rows[k0:k1])
        b0 = b1


def _straight(src, p, b0: int, b1: int, rows):
    """The source rows of a band one piece makes (its columns; its row range when rows is None)."""
    src = src[:, p.col0 : p.col0 + p.ncols]
    return src if rows is not None else src[p.row0 + b0 - p.dst_row0 : p.row0 + b1 - p.dst_row0]


def fill_quant(t, r0: int, r1: int, out: np.ndarray, scales: np.ndarray, sources: Sources, backend: str,
               stager=None) -> None:
    """out (uint8 bits of rows r0..r1 of FP8 tensor t) and scales[r0/128 : r1/128] <- its pieces."""
    on_host = uses_host(backend, stager) or (stager is not None and host.ERROR is None)
    if stager is not None and not on_host:
        backend = "torch"  # (the GPU pipeline has no FP8 path: quantized on the CPU, same bits)
    ue8m0 = t.scale_fmt == "ue8m0"
    for b0, b1, p, rows in bands(t, r0, r1):
        if p is None:  # rows from several pieces, or transposed: through the scratch
            src = np.zeros((BLOCK, t.shape2d[1]), np.float32)
            fill_rows(dataclasses.replace(t, dtype=dtypes.FLOAT32), b0, b1, src, sources, "cpu" if on_host else backend)
        else:
            src = _straight(sources.array(p.ref) if on_host else sources.tensor(p.ref), p, b0, b1, rows)
        _quant(src, rows, out[b0 - r0 : b1 - r0], scales[b0 // BLOCK : b1 // BLOCK], on_host, backend, ue8m0)


def _quant(src, rows, out: np.ndarray, scales: np.ndarray, on_host: bool, backend: str, ue8m0: bool) -> None:
    if on_host:
        host.gather_quant_fp8(src, rows, out, scales, ue8m0)
        return
    import torch

    from nanokern.ops.fp8_quant import gather_quant_fp8

    if isinstance(src, np.ndarray):
        src = torch.from_numpy(src)
    gather_quant_fp8(src, None if rows is None else torch.from_numpy(rows), torch.from_numpy(out).view(torch.float8_e4m3fn),
                     torch.from_numpy(scales), backend=backend, ue8m0=ue8m0)


def fill_quant_tensor(t, out, scales, tensor_of, gather_band, backend: str) -> None:
    """out (float8_e4m3fn [rows, cols] of t) and scales (float32 [rows/128, cols/128]), torch tensors
    on one device <- t's pieces: tensor_of(ref) gives a piece's source on that device,
    gather_band(t, b0, scratch) fills rows [b0, b0 + 128) of t into a float32 scratch there."""
    import torch

    from nanokern.ops.fp8_quant import gather_quant_fp8

    ue8m0 = t.scale_fmt == "ue8m0"
    for b0, b1, p, rows in bands(t, 0, t.shape2d[0]):
        if p is None:
            src = torch.zeros(BLOCK, t.shape2d[1], dtype=torch.float32, device=out.device)
            gather_band(t, b0, src)
        else:
            src = _straight(tensor_of(p.ref), p, b0, b1, rows)
            rows = None if rows is None else torch.from_numpy(rows).to(out.device)
        gather_quant_fp8(src, rows, out[b0:b1], scales[b0 // BLOCK : b1 // BLOCK], backend=backend, ue8m0=ue8m0)
