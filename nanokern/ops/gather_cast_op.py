"""gather_cast, the one kernel of a conversion: out[i, :] = cast_to(out.dtype, src[rows[i], :]).

Its home: the argument checks, the torch reference (the oracle of every backend), the dispatch,
and the registered ops with their fake kernels:
- torch.ops.nanokern.gather_cast: the C++ op (csrc/, CPU and CUDA kernels, nanokern._C);
- torch.ops.nanokern.gather_cast_triton: the Triton kernel (nanokern/ops/triton/gather_cast.py).
Both mutate `out` and return nothing; their fakes check shapes, dtypes, strides and devices.
(Named gather_cast_op so that nanokern.ops.gather_cast stays the function.)
"""
import torch

from nanokern.ops import _extension, _triton
from nanokern.ops.backends import resolve_backend

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_meta(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor) -> None:
    """Every check that needs no tensor data (the fake kernels run these)."""
    for name, t in (("src", src), ("out", out)):
        if t.dim() != 2:
            raise ValueError(f"gather_cast: {name} must be 2-D, got shape {tuple(t.shape)}")
        if t.dtype not in DTYPES:
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


def check(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor) -> None:
    check_meta(src, rows, out)
    if rows is not None and rows.device.type == "cpu" and rows.numel() > 0:  # on a GPU: kernels assert
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= src.size(0):
            raise ValueError(f"gather_cast: rows values span [{lo}, {hi}] but src has "
                             f"{src.size(0)} rows")


def gather_cast_torch(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor) -> None:
    """The reference: torch's own gather and cast (round to nearest even)."""
    if rows is None:
        out.copy_(src)
    else:
        out.copy_(src.index_select(0, rows))


@torch.library.custom_op("nanokern::gather_cast_triton", mutates_args=("out",),
                         schema="(Tensor src, Tensor? rows, Tensor(a!) out) -> ()")
def gather_cast_triton(src, rows, out) -> None:
    check(src, rows, out)
    _triton.kernels("gather_cast").launch(src, rows, out)


def _fake(src, rows, out) -> None:
    check_meta(src, rows, out)


gather_cast_triton.register_fake(_fake)
if _extension.CPU_ERROR is None:
    torch.library.register_fake("nanokern::gather_cast")(_fake)


def gather_cast(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor,
                backend: str = "torch") -> None:
    """out[i, :] = cast_to(out.dtype, src[rows[i], :]) for every i (rows=None: the identity).

    src, out: 2-D float32/bfloat16/float16 with stride(1) == 1 and any row stride (column or row
    slices of bigger tensors, e.g. views into a memory-mapped output file). rows: 1-D int64 on
    src's device, values in [0, src.size(0)). Rounding is to nearest even, bit-identical to
    `out.copy_(src[rows])` for every non-NaN value; a NaN stays a NaN (its payload may differ
    from torch's, which itself varies by path). backend: "auto", "torch", "cpu", "cuda", "triton".
    """
    check(src, rows, out)
    name = resolve_backend(backend, src.device)
    if rows is not None and not rows.is_contiguous():
        rows = rows.contiguous()
    if name == "torch":
        gather_cast_torch(src, rows, out)
    elif name == "triton":
        gather_cast_triton(src, rows, out)
    else:  # "cpu" and "cuda": the compiled op, dispatched on the tensors' device
        torch.ops.nanokern.gather_cast(src, rows, out)
