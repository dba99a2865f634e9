"""gather_cast on raw host buffers (numpy arrays over memory maps and staging buffers), through
nanokern._cpu: the same C++ kernel as the torch op's "cpu" backend, bound with pybind11 and
without torch, so that a CPU conversion never waits for `import torch`.

Arrays hold the bits in their dtype's storage type (io/dtypes.py): float32 as <f4, float16 as
<f2, bfloat16 as <u2. Rounding is to nearest even, bit-identical to torch's `tensor.to(dtype)`
(the reference, gather_cast_torch in ops/gather_cast_op.py) for every non-NaN value.
"""
from __future__ import annotations

import os

import numpy as np

ERROR: str | None = None
try:
    from nanokern import _cpu
except ImportError as e:  # not built: CPU conversions go through torch's "cpu"/"torch" backends
    _cpu = None
    ERROR = f"nanokern._cpu is not built ({e}); run `pip install --no-build-isolation -e .`"

KINDS = {np.dtype("<f4"): 0, np.dtype("<u2"): 1, np.dtype("<f2"): 2}  # the kernels' codes
TRANSPOSE_TILE = 64  # rows x columns per tile of a transposed copy (both sides stay in cache lines)
THREADS = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def _kind(a: np.ndarray, name: str) -> int:
    if a.ndim != 2:
        raise ValueError(f"gather_cast: {name} must be 2-D, got shape {a.shape}")
    k = KINDS.get(a.dtype)
    if k is None:
        raise ValueError(f"gather_cast: {name} holds {a.dtype}, not the bits of float32/bfloat16/float16")
    if a.shape[1] > 1 and a.strides[1] != a.itemsize:
        raise ValueError(f"gather_cast: {name} needs contiguous rows, got strides {a.strides}")
    if a.shape[0] > 1 and a.strides[0] % a.itemsize:
        raise ValueError(f"gather_cast: {name} has a row stride of {a.strides[0]} bytes")
    return k


def _rows(rows: np.ndarray | None, n: int, limit: int) -> int:
    if rows is None:
        return 0
    if rows.dtype != np.int64 or rows.ndim != 1 or rows.shape[0] != n or not rows.flags.c_contiguous:
        raise ValueError(f"gather_cast: rows must be contiguous 1-D int64 with {n} entries, got {rows.dtype} {rows.shape}")
    if n and (int(rows.min()) < 0 or int(rows.max()) >= limit):
        raise ValueError(f"gather_cast: rows span [{rows.min()}, {rows.max()}] but the source has {limit} rows")
    return rows.ctypes.data


def _writable(out: np.ndarray) -> None:
    if not out.flags.writeable:
        raise ValueError("gather_cast: out is read-only")


def gather_cast(src: np.ndarray, rows: np.ndarray | None, out: np.ndarray) -> None:
    """out[i, :] = cast(src[rows[i], :]) (rows None: src itself); any row strides."""
    sk, dk = _kind(src, "src"), _kind(out, "out")
    _writable(out)
    if src.shape[1] != out.shape[1] or (rows is None and src.shape[0] != out.shape[0]):
        raise ValueError(f"gather_cast: src {src.shape} does not fit out {out.shape}")
    n, cols = out.shape
    r = _rows(rows, n, src.shape[0])
    if n == 0 or cols == 0:
        return
    _cpu.gather_cast(src.ctypes.data, src.strides[0] // src.itemsize, sk, r, n, cols,
                     out.ctypes.data, out.strides[0] // out.itemsize, dk, THREADS)


def transpose_cast(src: np.ndarray, row0: int, rows: np.ndarray | None, out: np.ndarray) -> None:
    """out[i, j] = cast(src[j, r_i]) with r_i = rows[i], or row0 + i (rows None): a transposed
    read such as an input-major expert matrix, copied in cache-friendly tiles."""
    sk, dk = _kind(src, "src"), _kind(out, "out")
    _writable(out)
    n, cols = out.shape
    if src.shape[0] != cols:
        raise ValueError(f"transpose_cast: src has {src.shape[0]} rows for {cols} output columns")
    if rows is None and n and (row0 < 0 or row0 + n > src.shape[1]):
        raise ValueError(f"transpose_cast: columns [{row0}, {row0 + n}) of a source with {src.shape[1]}")
    r = _rows(rows, n, src.shape[1])
    if n == 0 or cols == 0:
        return
    _cpu.transpose_cast(src.ctypes.data, src.strides[0] // src.itemsize, sk, row0, r, n, cols,
                        out.ctypes.data, out.strides[0] // out.itemsize, dk, TRANSPOSE_TILE, THREADS)


def gather_quant_fp8(src: np.ndarray, rows: np.ndarray | None, out: np.ndarray, scale_inv: np.ndarray,
                     ue8m0: bool = False) -> None:
    """out (the uint8 bits of float8_e4m3fn) = src[rows] quantized per 128 x 128 block, scale_inv
    (float32 [n/128, C/128]) = 1 / each block's scale (ue8m0: powers of two): the kernel of
    ops/fp8_quant.py, same bits."""
    sk = _kind(src, "src")
    for name, a, dt in (("out", out, np.uint8), ("scale_inv", scale_inv, np.float32)):
        if a.ndim != 2 or a.dtype != dt or (a.shape[1] > 1 and a.strides[1] != a.itemsize) or a.strides[0] % a.itemsize:
            raise ValueError(f"gather_quant_fp8: {name} must be 2-D {np.dtype(dt)} with contiguous rows")
        _writable(a)
    n, cols = out.shape
    if n % 128 or cols % 128 or scale_inv.shape != (n // 128, cols // 128):
        raise ValueError(f"gather_quant_fp8: out {out.shape} (multiples of 128) and scale_inv {scale_inv.shape} disagree")
    if src.shape[1] != cols or (rows is None and src.shape[0] != n):
        raise ValueError(f"gather_quant_fp8: src {src.shape} does not fit out {out.shape}")
    r = _rows(rows, n, src.shape[0])
    if n == 0 or cols == 0:
        return
    _cpu.gather_quant_fp8(src.ctypes.data, src.strides[0] // src.itemsize, sk, r, n, cols, out.ctypes.data,
                          out.strides[0], scale_inv.ctypes.data, scale_inv.strides[0] // 4, bool(ue8m0), THREADS)


def all_finite(a: np.ndarray) -> bool:
    """No NaN or infinity in a float32/bfloat16/float16 (or float8_e4m3fn, as uint8) array (storage-typed)."""
    if a.size == 0:
        return True
    if a.dtype == np.uint8:  # float8_e4m3fn bits: no infinity, NaN is 0x7F / 0xFF
        return not ((a & 0x7F) == 0x7F).any()
    if _cpu is None:
        return not ((a & 0x7F80) == 0x7F80).any() if a.dtype == np.uint16 else bool(np.isfinite(a).all())
    return _cpu.all_finite(np.ascontiguousarray(a).ctypes.data, a.size, KINDS[a.dtype])
