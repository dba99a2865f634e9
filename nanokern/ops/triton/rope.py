"""Triton RoPE on q and k straight out of the fused qkv projection output.

Input: qkv [T, (n_rot + n_other) * d] (the first n_rot heads are rotated: q heads then k heads,
as in Nanotron's per-rank [Q_r; K_r; V_r] layout), positions [T], and cos/sin tables
[max_pos, d/2] in fp32. Output: [T, n_rot, d].

Two pairings of the head dimension:
- half-split (HF rotate_half, GPT-NeoX): pairs (i, i + d/2)
- interleaved (GPT-J, flash-attn interleaved=True): pairs (2i, 2i + 1)
For pair (a, b) with frequency i: a' = a*cos_i - b*sin_i, b' = b*cos_i + a*sin_i.

bf16: transformers computes q*cos + rotate_half(q)*sin with a bf16 rounding after each multiply
and after the add (cos/sin already rounded to bf16); the kernel does the same roundings in fp32
with integer ops (the caller passes bf16-rounded tables), so it reproduces HF bit for bit.
fused=True: fp32 arithmetic and one rounding (flash-attn's rotary kernel).
The arguments are checked by nanokern/ops/rope.py.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from nanokern.ops import _triton

from nanokern.ops.triton.rounding import bf16_bits, round_bf16


@triton.jit
def _rope_kernel(
    x_ptr, out_ptr, cos_ptr, sin_ptr, pos_ptr, n_tokens, n_heads, stride_x, stride_o,
    HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
    INTERLEAVED: tl.constexpr, BF16: tl.constexpr, FUSED: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_h = tl.program_id(1)
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    head = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    i = tl.arange(0, HALF)
    tmask = tok < n_tokens
    mask = tmask[:, None, None] & (head < n_heads)[None, :, None]
    pos = tl.load(pos_ptr + tok, mask=tmask, other=0).to(tl.int64)
    c = tl.load(cos_ptr + pos[:, None] * HALF + i[None, :], mask=tmask[:, None], other=0.0)[:, None, :]
    s = tl.load(sin_ptr + pos[:, None] * HALF + i[None, :], mask=tmask[:, None], other=0.0)[:, None, :]
    if INTERLEAVED:
        ia = 2 * i
        ib = 2 * i + 1
    else:
        ia = i
        ib = i + HALF
    tok64 = tok.to(tl.int64)
    base_x = x_ptr + tok64[:, None, None] * stride_x + head[None, :, None] * (2 * HALF)
    base_o = out_ptr + tok64[:, None, None] * stride_o + head[None, :, None] * (2 * HALF)
    a = tl.load(base_x + ia[None, None, :], mask=mask, other=0.0).to(tl.float32)
    b = tl.load(base_x + ib[None, None, :], mask=mask, other=0.0).to(tl.float32)
    if BF16 and FUSED:
        tl.store(base_o + ia[None, None, :], bf16_bits(a * c - b * s), mask=mask)
        tl.store(base_o + ib[None, None, :], bf16_bits(b * c + a * s), mask=mask)
    elif BF16:
        ra = round_bf16(round_bf16(a * c) - round_bf16(b * s))
        rb = round_bf16(round_bf16(b * c) + round_bf16(a * s))
        tl.store(base_o + ia[None, None, :], bf16_bits(ra), mask=mask)
        tl.store(base_o + ib[None, None, :], bf16_bits(rb), mask=mask)
    else:
        tl.store(base_o + ia[None, None, :], a * c - b * s, mask=mask)
        tl.store(base_o + ib[None, None, :], b * c + a * s, mask=mask)


def rope(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    n_rot: int,
    head_dim: int,
    interleaved: bool,
    out: torch.Tensor | None = None,
    fused: bool = False,
    config: str | None = None,
) -> torch.Tensor:
    """Rotate the first n_rot heads of each row of qkv [T, >= n_rot*head_dim]; returns [T, n_rot, d].

    cos/sin: fp32 [max_pos, head_dim/2] (for bf16 inputs, pass tables already rounded to bf16
    to get transformers' numerics; fused=True does the fp32 arithmetic with one final rounding,
    like flash-attn's rotary kernel). config: the tile set (nanokern.ops._triton.tiles), by
    default from the device. `out` may alias qkv's first n_rot heads (in-place).
    """
    T = qkv.shape[0]
    half = head_dim // 2
    cos = cos.to(device=qkv.device, dtype=torch.float32).contiguous()
    sin = sin.to(device=qkv.device, dtype=torch.float32).contiguous()
    positions = positions.to(qkv.device).contiguous()
    if out is None:
        out = torch.empty((T, n_rot, head_dim), dtype=qkv.dtype, device=qkv.device)
    o2 = out.view(T, -1) if out.dim() == 3 else out
    if o2.stride(1) != 1:
        raise ValueError("out must have a contiguous last dim")
    bf16 = qkv.dtype == torch.bfloat16
    if _triton.tiles(qkv, config) == "cpu":
        block_h = triton.next_power_of_2(n_rot)
        block_t = max(1, min(triton.next_power_of_2(T), max(1, 16384 // (block_h * half))))
        kw = {}
    else:
        # heads per program: the largest power of two dividing n_rot (no masked-off lanes), <= 32
        block_h = min(n_rot & -n_rot, 32, max(1, 2048 // half))
        block_t = max(1, min(triton.next_power_of_2(T), 4096 // (block_h * half)))
        kw = {"num_warps": 4}
    grid = (triton.cdiv(T, block_t), triton.cdiv(n_rot, block_h))
    with _triton.launch_lock(qkv):
        _rope_kernel[grid](
            qkv, o2.view(torch.int16) if bf16 else o2, cos, sin, positions, T, n_rot, qkv.stride(0), o2.stride(0),
            HALF=half, BLOCK_T=block_t, BLOCK_H=block_h, INTERLEAVED=interleaved, BF16=bf16, FUSED=fused, **kw,
        )
    return out
