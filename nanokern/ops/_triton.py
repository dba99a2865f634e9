"""Launches the Triton gather_cast kernel; runs it under the Triton interpreter on machines
without a CUDA device (TRITON_INTERPRET must be set before the kernel module is imported)."""
import contextlib
import functools
import importlib.util
import os
import threading

import torch

_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}
# Importing triton from two threads at once fails (a circular import inside triton), and the
# interpreter patches triton.language globally while a kernel runs: both are serialised.
_LOCK = threading.Lock()


@functools.cache
def importable() -> bool:
    return importlib.util.find_spec("triton") is not None


_kernel_module = None  # set once the import has completed


def kernel_module():
    """Imports the kernel module once, in interpreter mode when there is no CUDA device."""
    global _kernel_module
    with _LOCK:
        if _kernel_module is None:
            if not torch.cuda.is_available():
                os.environ.setdefault("TRITON_INTERPRET", "1")
            import nanokern.triton.gather_cast as mod

            _kernel_module = mod
        return _kernel_module


def interpreted() -> bool:
    """Whether the kernel runs (or, not imported yet, will run) under the interpreter."""
    if _kernel_module is not None:
        from triton.runtime.interpreter import InterpretedFunction

        return isinstance(_kernel_module.gather_cast_kernel, InterpretedFunction)
    return os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _blocks(n_rows: int, n_cols: int, interpret: bool) -> tuple[int, int]:
    """(BLOCK_R, BLOCK_C). The interpreter costs ~1-3 ms per program: use big blocks there."""
    max_c, elems = (1 << 15, 1 << 17) if interpret else (1024, 4096)
    block_c = min(_pow2(n_cols), max_c)
    block_r = max(1, min(elems // block_c, _pow2(n_rows)))
    return block_r, block_c


def gather_cast_triton(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor) -> None:
    mod = kernel_module()
    interpret = interpreted()
    if src.device.type != "cuda" and not interpret:
        raise ValueError("backend 'triton' needs CUDA tensors here: the kernel was compiled for the "
                         "GPU (set TRITON_INTERPRET=1 before nanokern imports it to run on CPU)")
    n_rows, n_cols = out.shape
    if n_rows == 0 or n_cols == 0:
        return
    block_r, block_c = _blocks(n_rows, n_cols, interpret)
    n_col_blocks = -(-n_cols // block_c)
    grid = (-(-n_rows // block_r) * n_col_blocks,)
    with _LOCK if interpret else contextlib.nullcontext():
        mod.gather_cast_kernel[grid](
            src.view(_BITS[src.dtype]), rows, out.view(_BITS[out.dtype]), n_rows, n_cols,
            src.stride(0), out.stride(0), n_col_blocks,
            HAS_ROWS=rows is not None, SRC_KIND=_KIND[src.dtype], DST_KIND=_KIND[out.dtype],
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
        )
