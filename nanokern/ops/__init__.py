"""gather_cast, the one kernel of a conversion: out[i, :] = cast_to(out.dtype, src[rows[i], :]).

Backends that agree bit for bit: "torch" (the reference), "cpu" (C++/OpenMP, nanokern._C),
"cuda" (nanokern._C_cuda), "triton" (interpreted on CPU tensors when there is no GPU).
"""
import torch

from nanokern.ops import _triton
from nanokern.ops.backends import available_backends, resolve_backend
from nanokern.ops.reference import gather_cast_torch

__all__ = ["gather_cast", "available_backends", "resolve_backend"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _check(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor) -> None:
    for name, t in (("src", src), ("out", out)):
        if t.dim() != 2:
            raise ValueError(f"gather_cast: {name} must be 2-D, got shape {tuple(t.shape)}")
        if t.dtype not in _DTYPES:
            raise ValueError(f"gather_cast: {name} dtype {t.dtype} is not float32/bfloat16/float16")
        if t.size(1) > 1 and t.stride(1) != 1:
            raise ValueError(f"gather_cast: {name} needs stride(1) == 1, got strides {t.stride()}")
    if out.device != src.device:
        raise ValueError(f"gather_cast: src is on {src.device} but out on {out.device}")
    n = out.size(0)
    if rows is None:
        if src.shape != out.shape:
            raise ValueError(f"gather_cast: without rows, src {tuple(src.shape)} and out "
                             f"{tuple(out.shape)} must have the same shape")
        return
    if src.size(1) != out.size(1):
        raise ValueError(f"gather_cast: src has {src.size(1)} columns but out has {out.size(1)}")
    if rows.dim() != 1 or rows.dtype != torch.int64 or rows.size(0) != n:
        raise ValueError(f"gather_cast: rows must be 1-D int64 with {n} entries (out's rows), got "
                         f"{rows.dtype} of shape {tuple(rows.shape)}")
    if rows.device != src.device:
        raise ValueError(f"gather_cast: rows is on {rows.device} but src on {src.device}")
    if rows.device.type == "cpu" and n > 0:  # on a GPU this would synchronise: kernels assert
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= src.size(0):
            raise ValueError(f"gather_cast: rows values span [{lo}, {hi}] but src has "
                             f"{src.size(0)} rows")


def gather_cast(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor,
                backend: str = "torch") -> None:
    """out[i, :] = cast_to(out.dtype, src[rows[i], :]) for every i (rows=None: the identity).

    src, out: 2-D float32/bfloat16/float16 with stride(1) == 1 and any row stride (column or row
    slices of bigger tensors, e.g. views into a memory-mapped output file). rows: 1-D int64 on
    src's device, values in [0, src.size(0)). Rounding is to nearest even, bit-identical to
    `out.copy_(src[rows])` for every non-NaN value; a NaN stays a NaN (its payload may differ
    from torch's, which itself varies by path). backend: "auto", "torch", "cpu", "cuda", "triton".
    """
    _check(src, rows, out)
    name = resolve_backend(backend, src.device)
    if rows is not None and not rows.is_contiguous():
        rows = rows.contiguous()
    if name == "torch":
        gather_cast_torch(src, rows, out)
    elif name == "triton":
        _triton.gather_cast_triton(src, rows, out)
    else:  # "cpu" and "cuda": the compiled op, dispatched on the tensors' device
        torch.ops.nanokern.gather_cast(src, rows, out)
