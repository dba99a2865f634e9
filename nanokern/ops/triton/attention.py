"""Triton causal attention with GQA (flash-attention style online softmax, forward only).

q [B, S, nq, d], k/v [B, S, nkv, d] (any strides with a contiguous last dim, e.g. views into
the rotated qk buffer and the fused qkv output); q head h attends with kv head h // (nq / nkv)
(HF repeat_kv / flash-attn GQA convention). Scores, softmax and the weighted sum run in fp32
(IEEE fp32 dots on a GPU, not tf32); the output is rounded once to the input dtype.
Output: [B, S, nq, d] contiguous.

Sliding window (`window` w, causal only): query i sees keys i-w < j <= i, w keys including
itself (flash-attn window_size=(w-1, 0), transformers' sliding_window). Key blocks wholly left
of the window are skipped; a block in which a query row sees no key yet contributes nothing
(the running max stays -inf and is replaced by 0 in the exponentials, so no NaN arises).

Reductions are written tl.reduce(x, axis, tl.standard._sum_combine / _elementwise_max) (what
tl.sum / tl.max expand to) and tl.full replaces tl.zeros: those tl functions are themselves
@triton.jit functions, decorated when triton is first imported, so if anything (transformers
does) imported triton before the interpreter was switched on, calling them from an interpreted
kernel fails; tl.reduce and tl.full are patched by the interpreter either way.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nanokern.ops import _triton

from nanokern.ops.triton.rounding import bf16_bits


@triton.jit
def _attn_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, S, NQ, N_REP, scale, WINDOW,
    sqb, sqs, sqh, skb, sks, skh, svb, svs, svh, sob, sos, soh,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, BF16: tl.constexpr,
    HAS_WINDOW: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // NQ).to(tl.int64)
    h = pid_bh % NQ
    kvh = h // N_REP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    mrow = offs_m < S
    q = tl.load(q_ptr + b * sqb + offs_m[:, None] * sqs + h * sqh + offs_d[None, :], mask=mrow[:, None], other=0.0)
    q = q.to(tl.float32) * scale
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, tl.float32)
    acc = tl.full([BLOCK_M, D], 0.0, tl.float32)
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, S)
    else:
        hi = S
    if HAS_WINDOW:
        lo = tl.maximum(pid_m * BLOCK_M - WINDOW + 1, 0) // BLOCK_N * BLOCK_N
    else:
        lo = 0
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        ncol = offs_n < S
        kt = tl.load(k_ptr + b * skb + offs_n[None, :] * sks + kvh * skh + offs_d[:, None], mask=ncol[None, :], other=0.0)
        qk = tl.dot(q, kt.to(tl.float32), input_precision="ieee")
        valid = ncol[None, :]
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= offs_n[None, :])
        if HAS_WINDOW:
            valid = valid & (offs_n[None, :] > offs_m[:, None] - WINDOW)
        qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(qk, 1, tl.standard._elementwise_max))  # = tl.max
        if HAS_WINDOW:  # a row that sees no key yet: exp(-inf - 0) = 0 instead of exp(-inf + inf) = NaN
            m_new = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(qk - m_new[:, None])
        alpha = tl.exp(m_i - m_new)
        l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)  # = tl.sum
        v = tl.load(v_ptr + b * svb + offs_n[:, None] * svs + kvh * svh + offs_d[None, :], mask=ncol[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        m_i = m_new
    if HAS_WINDOW:  # padding rows past S may see no key at all: keep them finite (never stored)
        l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    optr = o_ptr + b * sob + offs_m[:, None] * sos + h * soh + offs_d[None, :]
    if BF16:
        tl.store(optr, bf16_bits(out), mask=mrow[:, None])
    else:
        tl.store(optr, out, mask=mrow[:, None])


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True, scale: float | None = None,
              config: str | None = None, window: int | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + causal mask) v with GQA; q [B,S,nq,d], k/v [B,S,nkv,d] -> [B,S,nq,d].

    window: keys a query sees, itself included (causal only); None: every earlier key.

    config: the tile set (nanokern.ops._triton.tiles), by default from the device. The arguments
    are checked by nanokern/ops/attention.py.
    """
    B, S, nq, d = q.shape
    nkv = k.shape[2]
    out = torch.empty((B, S, nq, d), dtype=q.dtype, device=q.device)
    bf16 = q.dtype == torch.bfloat16
    if _triton.tiles(q, config) == "cpu":
        block = max(16, min(128, triton.next_power_of_2(S)))
        kw = {}
    else:
        block = 64 if d <= 64 else 32
        kw = {"num_warps": 4}
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    grid = (triton.cdiv(S, block), B * nq)
    with _triton.launch_lock(q):
        _attn_kernel[grid](
            q, k, v, out.view(torch.int16) if bf16 else out, S, nq, nq // nkv, float(scale), int(window or 0),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            D=d, BLOCK_M=block, BLOCK_N=block, CAUSAL=causal, BF16=bf16, HAS_WINDOW=window is not None, **kw,
        )
    return out
