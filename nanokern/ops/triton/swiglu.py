"""Triton SwiGLU on the fused gate_up projection output: out = silu(gate) * up.

Input gu [T, 2I] holds [gate | up] per row (gate = first half, Nanotron's GLUActivation and HF's
LlamaMLP order); output [T, I]. silu(g) = g / (1 + exp(-g)) in fp32. bf16: like transformers'
act_fn(gate) * up, silu's result is rounded to bf16 before the multiply, and the product again
(integer-op rounding, exact in the interpreter and on a GPU). The arguments are checked by
nanokern/ops/swiglu.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanokern.ops import _triton

from nanokern.ops.triton.rounding import bf16_bits, round_bf16


@triton.jit
def _swiglu_kernel(
    gu_ptr, out_ptr, n_rows, n_cols, stride_in, stride_out,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BF16: tl.constexpr,
):
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    rows = (pid_r * BLOCK_R + tl.arange(0, BLOCK_R)).to(tl.int64)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (rows < n_rows)[:, None] & (cols < n_cols)[None, :]
    gptr = gu_ptr + rows[:, None] * stride_in + cols[None, :]
    g = tl.load(gptr, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(gptr + n_cols, mask=mask, other=0.0).to(tl.float32)
    act = g / (1.0 + tl.exp(-g))
    optr = out_ptr + rows[:, None] * stride_out + cols[None, :]
    if BF16:
        tl.store(optr, bf16_bits(round_bf16(act) * u), mask=mask)
    else:
        tl.store(optr, act * u, mask=mask)


def swiglu(gu: torch.Tensor, out: torch.Tensor | None = None, config: str | None = None) -> torch.Tensor:
    """silu(gu[..., :I]) * gu[..., I:] for gu [..., 2I]; returns [..., I].

    config: the tile set (nanokern.ops._triton.tiles), by default from the device.
    """
    two_i = gu.shape[-1]
    n = two_i // 2
    g2 = gu.reshape(-1, two_i)
    if g2.stride(-1) != 1:
        g2 = g2.contiguous()
    rows = g2.shape[0]
    if out is None:
        out = torch.empty((*gu.shape[:-1], n), dtype=gu.dtype, device=gu.device)
    o2 = out.view(-1, n)
    bf16 = gu.dtype == torch.bfloat16
    if _triton.tiles(gu, config) == "cpu":
        block_c = triton.next_power_of_2(n)
        block_r = max(1, min(triton.next_power_of_2(rows), max(1, 32768 // block_c)))
        kw = {}
    else:
        block_c = min(triton.next_power_of_2(n), 1024)
        block_r = max(1, 4096 // block_c)
        kw = {"num_warps": 4}
    grid = (triton.cdiv(rows, block_r), triton.cdiv(n, block_c))
    with _triton.launch_lock(gu):
        _swiglu_kernel[grid](
            g2, o2.view(torch.int16) if bf16 else o2, rows, n, g2.stride(0), o2.stride(0),
            BLOCK_R=block_r, BLOCK_C=block_c, BF16=bf16, **kw,
        )
    return out
