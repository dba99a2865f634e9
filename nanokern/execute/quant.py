"""Filling an FP8 weight (plan/fp8.py) band by band: rows [r0, r1), multiples of 128, quantized
per 128 x 128 block by the fused gather-quantize kernel (ops/fp8_quant.py), with the band's row of
scales written into `scales` (the tensor's [rows/128, cols/128] float32 scale_inv, written after
the weight from the same array).

Bands that one piece covers whole (all columns, rows read straight, as in any TP shard of 128 rows
or more, RoPE-permuted or not) go through the kernel straight from the memory-mapped source: no
copy is made. A band whose rows come from several pieces (two TP shards meeting inside a block) or
from a transposed read (Nanotron's input-major experts) is first gathered into a float32 scratch of
128 rows by gather_cast (exact: widening), then quantized from there: the one bounded buffer.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nanokern.execute.fill import Sources, _spans, fill_rows, uses_host
from nanokern.io import dtypes
from nanokern.ops import host

BLOCK = 128


def _whole(t, p, a: int, b: int) -> bool:
    """Whether piece p alone makes rows [a, b) of t (every column, no transpose)."""
    return (not p.transpose and p.dst_col0 == 0 and p.ncols == t.shape2d[1]
            and p.dst_row0 <= a and b <= p.dst_row0 + p.nrows)


def fill_quant(t, r0: int, r1: int, out: np.ndarray, scales: np.ndarray, sources: Sources, backend: str,
               stager=None) -> None:
    """out (uint8 bits of rows r0..r1 of FP8 tensor t) and scales[r0/128 : r1/128] <- its pieces."""
    on_host = uses_host(backend, stager) or (stager is not None and host.ERROR is None)
    if stager is not None and not on_host:
        backend = "torch"  # (the GPU pipeline has no FP8 path: quantized on the CPU, same bits)
    cols = t.shape2d[1]
    b0 = r0
    while b0 < r1:
        p = next((p for p in t.pieces if _whole(t, p, b0, b0 + BLOCK)), None)
        if p is None:  # rows from several pieces, or transposed: through the scratch
            scratch = np.zeros((BLOCK, cols), np.float32)
            fill_rows(dataclasses.replace(t, dtype=dtypes.FLOAT32), b0, b0 + BLOCK, scratch, sources,
                      "cpu" if on_host else backend)
            _quant(scratch, None, out[b0 - r0 : b0 - r0 + BLOCK], scales[b0 // BLOCK : b0 // BLOCK + 1], on_host,
                   backend)
            b0 += BLOCK
            continue
        b1 = b0 + BLOCK  # as many whole bands as this piece makes
        while b1 + BLOCK <= r1 and _whole(t, p, b1, b1 + BLOCK):
            b1 += BLOCK
        k0, k1 = b0 - p.dst_row0, b1 - p.dst_row0
        src = sources.array(p.ref) if on_host else sources.tensor(p.ref)
        src = src[:, p.col0 : p.col0 + p.ncols]
        rows = None if p.rows is None else np.ascontiguousarray(p.rows[k0:k1])
        if rows is None:
            src = src[p.row0 + k0 : p.row0 + k1]
        _quant(src, rows, out[b0 - r0 : b1 - r0], scales[b0 // BLOCK : b1 // BLOCK], on_host, backend)
        b0 = b1


def _quant(src, rows, out: np.ndarray, scales: np.ndarray, on_host: bool, backend: str) -> None:
    if on_host:
        host.gather_quant_fp8(src, rows, out, scales)
        return
    import torch

    from nanokern.ops.fp8_quant import gather_quant_fp8

    if isinstance(src, np.ndarray):
        src = torch.from_numpy(src)
    gather_quant_fp8(src, None if rows is None else torch.from_numpy(rows), torch.from_numpy(out).view(torch.float8_e4m3fn),
                     torch.from_numpy(scales), backend=backend)
