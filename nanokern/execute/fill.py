"""Filling rows of one output tensor from its pieces (plan/pieces.py): each piece is a row gather from
one memory-mapped source tensor into a rectangle of the output, cast on the way.

`out` is a numpy view of the writer's staging buffer (the dtype's storage type). The "cpu"
backend runs the C++ kernel on it through the torch-free binding (ops/host.py); the other
backends ("torch", "triton", "cuda", and the staged GPU pipeline) see it as a torch tensor.

A piece over an FP8 weight (plan/pieces.Fp8Ref) is dequantized as it is gathered, on the host
whatever the backend: ops/fp8_dequant.gather_dequant writes its rows straight into `out`, each
element one float32 product and one cast (the backend's: torch's `.to` for "torch", else the
C++ kernel's, whose bytes every other backend gives). Scratch: at most 8 MiB per call (per writer
thread), whatever the tensor; numpy releases the GIL in its loops, so the threads overlap.
"""

from __future__ import annotations

import threading

import numpy as np

from nanokern.io.safetensors import close_maps, map_array, map_tensor
from nanokern.ops import fp8_dequant, host
from nanokern.plan.pieces import Fp8Ref


class Sources:
    """Memory maps of source files, opened once and shared by the worker threads."""

    def __init__(self):
        self._maps: dict = {}
        self._lock = threading.Lock()

    def array(self, ref) -> np.ndarray:
        with self._lock:
            return map_array(ref, self._maps)

    def tensor(self, ref):
        with self._lock:
            return map_tensor(ref, self._maps)

    def fp8(self, ref: Fp8Ref) -> tuple[np.ndarray, np.ndarray]:
        """An FP8 weight's e4m3 bytes (uint8) and its float32 scale grid."""
        with self._lock:
            q, s = map_array(ref.weight, self._maps), map_array(ref.scales, self._maps)
        return q, fp8_dequant.scales_host(s.reshape(-(-q.shape[0] // ref.block[0]), -(-q.shape[1] // ref.block[1])))

    def close(self):
        close_maps(self._maps.values())
        self._maps.clear()


def uses_host(backend: str, stager) -> bool:
    """Whether pieces run on the torch-free host kernel."""
    return backend == "cpu" and stager is None and host.ERROR is None


def _spans(t, r0: int, r1: int):
    """(piece, a, b, k0, k1): the rows [a, b) of the output that piece covers within [r0, r1),
    which are its rows [k0, k1)."""
    for p in t.pieces:
        a, b = max(p.dst_row0, r0), min(p.dst_row0 + p.nrows, r1)
        if a < b:
            yield p, a, b, a - p.dst_row0, b - p.dst_row0


def fill_rows(t, r0: int, r1: int, out: np.ndarray, sources: Sources, backend: str, stager=None) -> None:
    """out (rows r0..r1 of tensor t) <- every piece's share of those rows."""
    if t.dtype.kind < 0:  # bits no kernel casts (FP8 values handed over whole: nanokern.live): as they are
        for p, a, b, k0, k1 in _spans(t, r0, r1):
            if p.transpose or p.ref.dtype != t.dtype:
                raise ValueError(f"{t.name}: {t.dtype} is copied as it is, not cast from {p.ref.dtype}")
            src = sources.array(p.ref)[:, p.col0 : p.col0 + p.ncols]
            src = src[p.rows[k0:k1]] if p.rows is not None else src[p.row0 + k0 : p.row0 + k1]
            out[a - r0 : b - r0, p.dst_col0 : p.dst_col0 + p.ncols] = src
        return
    if uses_host(backend, stager):
        for p, a, b, k0, k1 in _spans(t, r0, r1):
            if isinstance(p.ref, Fp8Ref):
                _dequant(p, out[a - r0 : b - r0], k0, k1, sources, backend)
                continue
            src = sources.array(p.ref)
            dst = out[a - r0 : b - r0, p.dst_col0 : p.dst_col0 + p.ncols]
            rows = None if p.rows is None else np.ascontiguousarray(p.rows[k0:k1])
            if p.transpose:  # output rows are source columns
                host.transpose_cast(src[p.col0 : p.col0 + p.ncols], p.row0 + k0, rows, dst)
            else:
                src = src[:, p.col0 : p.col0 + p.ncols]
                host.gather_cast(src if rows is not None else src[p.row0 + k0 : p.row0 + k1], rows, dst)
        return
    _fill_rows_torch(t, r0, r1, out, sources, backend, stager)


def _table_cast(backend: str):
    """cast(src, out): float32 -> out's dtype, to nearest even, as `backend` casts (a NaN's bits
    differ: "torch" is torch's `.to`, the kernels keep a NaN's sign and top bits: ops/host.py)."""
    if backend != "torch" and host.ERROR is None:
        return lambda src, out: host.gather_cast(src, None, out)

    def cast(src: np.ndarray, out: np.ndarray) -> None:
        import torch

        dst = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16) if out.dtype == np.dtype("<u2") else torch.from_numpy(out)
        dst.copy_(torch.from_numpy(src))

    return cast


def _dequant(p, dst: np.ndarray, k0: int, k1: int, sources: Sources, backend: str) -> None:
    """dst (the output rows of piece p's rows [k0, k1)) <- those rows of its FP8 weight, dequantized."""
    q, s = sources.fp8(p.ref)
    block = p.ref.block
    if p.transpose:  # output rows are source columns: the transpose, its grid and block transposed
        q, s, block = q.T, s.T, block[::-1]
    rows = None if p.rows is None else p.rows[k0:k1]
    fp8_dequant.gather_dequant(q, s, block, rows, p.row0 + k0, p.col0, dst[:, p.dst_col0 : p.dst_col0 + p.ncols],
                               _table_cast(backend))


def _fill_rows_torch(t, r0, r1, out, sources, backend, stager) -> None:
    import torch

    from nanokern.ops import gather_cast

    host_out, out = out, torch.from_numpy(out).view(t.dtype.torch)
    for p, a, b, k0, k1 in _spans(t, r0, r1):
        if isinstance(p.ref, Fp8Ref):
            _dequant(p, host_out[a - r0 : b - r0], k0, k1, sources, backend)
            continue
        src = sources.tensor(p.ref)
        if p.transpose:
            src = src.t()
        src = src[:, p.col0 : p.col0 + p.ncols]
        dst = out[a - r0 : b - r0, p.dst_col0 : p.dst_col0 + p.ncols]
        rows = None if p.rows is None else p.rows[k0:k1]
        if rows is None:
            src = src[p.row0 + k0 : p.row0 + k1]
        if p.transpose and rows is not None:  # a gather from a transposed view: index_select copies it
            src, rows = src[torch.from_numpy(rows)], None
        if p.transpose and stager is None and not src.is_contiguous():
            tile = host.TRANSPOSE_TILE  # a block of source rows at a time
            for j in range(0, src.shape[1], tile):
                dst[:, j : j + tile].copy_(src[:, j : j + tile])
            continue
        if p.transpose:
            src = src.contiguous()
        if stager is not None:
            stager.run_piece(src, rows, dst)
        else:
            gather_cast(src, None if rows is None else torch.from_numpy(rows), dst, backend=backend)
