"""Triton attention of a few new queries over a KV cache (the decode step), GQA, forward only.

q [B, T, nq, d] (T new tokens, usually 1), k/v [B, L, nkv, d] the cache (any strides with a
contiguous last dim: views into a preallocated buffer), q_pos [T] and k_pos [L] int64 absolute
positions shared by the batch (k_pos -1: an empty slot). Query at position p sees key slot j iff
0 <= k_pos[j] <= p and, with a window w, k_pos[j] > p - w (w keys including itself, as
nanokern/ops/attention.attention_mask). Slots may be in any order (a rolling window's ring).
Left padding: k_min [B] (optional), the first real slot position of each sequence: batch b's
query sees only keys with k_pos >= k_min[b], except that a padding query (q_pos < k_min[b])
sees itself, so that its (unused) output stays finite.

One program per (batch, kv head, query): it holds the N_REP q heads that share the kv head, so
each key block is loaded once for all of them. Scores, softmax and the weighted sum in fp32
(elementwise products and tl.reduce, no tl.dot: one query row is below tl.dot's minimum tile);
the output is rounded once to the input dtype. Reductions are written with tl.reduce (see
nanokern/ops/triton/attention.py for why).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from nanokern.ops import _triton

from nanokern.ops.triton.rounding import bf16_bits


@triton.jit
def _decode_attn_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, qpos_ptr, kpos_ptr, kmin_ptr, L, NKV, N_REP, scale, WINDOW,
    sqb, sqt, sqh, skb, skl, skh, svb, svl, svh, sob, sot, soh,
    D: tl.constexpr, R: tl.constexpr, BLOCK_N: tl.constexpr, BF16: tl.constexpr, HAS_WINDOW: tl.constexpr,
    HAS_KMIN: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    t = tl.program_id(1)
    b = (pid_bh // NKV).to(tl.int64)
    kvh = pid_bh % NKV
    r = tl.arange(0, R)
    rmask = r < N_REP
    h = kvh * N_REP + r
    offs_d = tl.arange(0, D)
    q = tl.load(q_ptr + b * sqb + t * sqt + h[:, None] * sqh + offs_d[None, :], mask=rmask[:, None], other=0.0)
    q = q.to(tl.float32) * scale  # [R, D]
    qp = tl.load(qpos_ptr + t)
    if HAS_KMIN:
        kmin = tl.load(kmin_ptr + b)
    m_i = tl.full([R], float("-inf"), tl.float32)
    l_i = tl.full([R], 0.0, tl.float32)
    acc = tl.full([R, D], 0.0, tl.float32)
    for start in range(0, L, BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        nmask = n < L
        kp = tl.load(kpos_ptr + n, mask=nmask, other=-1)
        valid = nmask & (kp >= 0) & (kp <= qp)
        if HAS_WINDOW:
            valid = valid & (kp > qp - WINDOW)
        if HAS_KMIN:
            valid = valid & ((kp >= kmin) | (kp == qp))
        k = tl.load(k_ptr + b * skb + n[:, None] * skl + kvh * skh + offs_d[None, :], mask=nmask[:, None], other=0.0)
        s = tl.reduce(q[:, None, :] * k.to(tl.float32)[None, :, :], 2, tl.standard._sum_combine)  # [R, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.reduce(s, 1, tl.standard._elementwise_max))
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # nothing seen yet: exp(-inf) = 0, no NaN
        p = tl.exp(s - m_use[:, None])
        alpha = tl.exp(m_i - m_use)
        l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)
        v = tl.load(v_ptr + b * svb + n[:, None] * svl + kvh * svh + offs_d[None, :], mask=nmask[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.reduce(p[:, :, None] * v.to(tl.float32)[None, :, :], 1, tl.standard._sum_combine)
        m_i = m_new
    l_i = tl.where(l_i == 0.0, 1.0, l_i)  # a query that sees no key (never in a decode step) stays finite
    out = acc / l_i[:, None]
    optr = o_ptr + b * sob + t * sot + h[:, None] * soh + offs_d[None, :]
    if BF16:
        tl.store(optr, bf16_bits(out), mask=rmask[:, None])
    else:
        tl.store(optr, out, mask=rmask[:, None])


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                     window: int | None = None, scale: float | None = None, config: str | None = None,
                     k_min: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + position mask) v with GQA; q [B,T,nq,d], k/v [B,L,nkv,d] -> [B,T,nq,d].
    k_min [B]: left padding (see the module docstring).

    config: the tile set (nanokern.ops._triton.tiles), by default from the device. The arguments
    are checked by nanokern/ops/decode_attention.py.
    """
    B, T, nq, d = q.shape
    L, nkv = k.shape[1], k.shape[2]
    n_rep = nq // nkv
    R = triton.next_power_of_2(n_rep)
    out = torch.empty((B, T, nq, d), dtype=q.dtype, device=q.device)
    bf16 = q.dtype == torch.bfloat16
    if _triton.tiles(q, config) == "cpu":
        block = max(16, min(1024, triton.next_power_of_2(L)))
        kw = {}
    else:
        block = max(16, min(128, 8192 // (R * d)))
        kw = {"num_warps": 4}
    q_pos = q_pos.to(device=q.device, dtype=torch.int64).contiguous()
    k_pos = k_pos.to(device=q.device, dtype=torch.int64).contiguous()
    if k_min is not None:
        k_min = k_min.to(device=q.device, dtype=torch.int64).contiguous()
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    grid = (B * nkv, T)
    with _triton.launch_lock(q):
        _decode_attn_kernel[grid](
            q, k, v, out.view(torch.int16) if bf16 else out, q_pos, k_pos, k_pos if k_min is None else k_min, L, nkv, n_rep, float(scale), int(window or 0),
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            D=d, R=R, BLOCK_N=block, BF16=bf16, HAS_WINDOW=window is not None, HAS_KMIN=k_min is not None, **kw,
        )
    return out
