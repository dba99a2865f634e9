"""Triton RMSNorm with transformers' LlamaRMSNorm numerics.

    y = weight * cast(x * rsqrt(mean(x^2) + eps), x.dtype)

The variance and the normalisation run in fp32; the normalised value is rounded to the input
dtype BEFORE the multiplication by the weight (as LlamaRMSNorm does), and the product is rounded
again (the product of two bf16 values is exact in fp32, so this is bit-exact to torch). With
fused=True the weight multiply happens in fp32 and only the result is rounded. bf16 rounding is
done with integer ops and stored through an int16 view, so the result is the same in the Triton
interpreter (whose float casts truncate) and on a GPU.

Supported dtypes: float32, bfloat16 (x and weight in the same dtype). Load this module through
nanokern.ops._triton.kernels (which runs it in the interpreter where there is no CUDA device);
the arguments are checked by nanokern/ops/rms_norm.py.

Reductions are written tl.reduce(x, axis, tl.standard._sum_combine) (what tl.sum expands to)
instead of tl.sum: tl.sum is itself a @triton.jit function, decorated when triton is first
imported, so if anything (transformers does) imported triton before the interpreter was switched
on, calling it from an interpreted kernel fails; tl.reduce is patched by the interpreter either way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanokern.ops import _triton

from nanokern.ops.triton.rounding import bf16_bits, round_bf16


@triton.jit
def _rms_norm_kernel(
    x_ptr, w_ptr, out_ptr, n_rows, n_cols, stride_x, stride_o, eps,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BF16: tl.constexpr, FUSED: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < n_rows
    cmask = cols < n_cols
    mask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    var = tl.reduce(x * x, 1, tl.standard._sum_combine) / n_cols  # = tl.sum (see the module note)
    inv = 1.0 / tl.sqrt(var + eps)
    y = x * inv[:, None]
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
    optr = out_ptr + rows64[:, None] * stride_o + cols[None, :]
    if BF16:
        if not FUSED:
            y = round_bf16(y)  # LlamaRMSNorm: cast to the input dtype, then times the weight
        tl.store(optr, bf16_bits(y * w[None, :]), mask=mask)
    else:
        tl.store(optr, y * w[None, :], mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None, fused: bool = False,
             config: str | None = None) -> torch.Tensor:
    """RMSNorm over the last dim of x (any leading shape).

    fused=False: LlamaRMSNorm's roundings; fused=True: fp32 x_hat * weight, one rounding (flash-attn style).
    config: the tile set (nanokern.ops._triton.tiles), by default from the device.
    """
    n = x.shape[-1]
    weight = weight.to(x.dtype).contiguous()
    x2 = x.reshape(-1, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    if out is None:
        out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    o2 = out.view(-1, n)
    bf16 = x.dtype == torch.bfloat16
    block_c = triton.next_power_of_2(n)
    if _triton.tiles(x, config) == "cpu":
        # ~1-3 ms per program in the interpreter: few programs, big blocks
        block_r = max(1, min(triton.next_power_of_2(rows), max(1, 16384 // block_c)))
        kw = {}
    else:
        block_r = 1 if block_c >= 1024 else max(1, 1024 // block_c)
        kw = {"num_warps": 8 if block_c >= 4096 else 4}
    grid = (triton.cdiv(rows, block_r),)
    with _triton.launch_lock(x):
        _rms_norm_kernel[grid](
            x2, weight, o2.view(torch.int16) if bf16 else o2, rows, n, x2.stride(0), o2.stride(0), float(eps),
            BLOCK_R=block_r, BLOCK_C=block_c, BF16=bf16, FUSED=fused, **kw,
        )
    return out
