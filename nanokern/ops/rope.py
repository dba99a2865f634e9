"""RoPE on q and k straight out of the fused qkv projection: the cos/sin tables, the torch
reference, the Triton op and the dispatch.

qkv [T, >= n_rot * d] (the first n_rot heads are rotated: q heads then k heads, as in
Nanotron's per-rank [Q_r; K_r; V_r] layout), positions [T] (absolute: a decode step passes
start..start+T-1), cos/sin [max_pos, d/2]. Output [T, n_rot, d]. Pairs of the head dimension:
half-split (i, i + d/2) as HF's rotate_half, or interleaved (2i, 2i + 1) as GPT-J.
numerics "hf": a*cos - b*sin in the input dtype, each op rounded (HF's q*cos + rotate_half(q)*sin);
"fused": fp32 then one rounding (flash-attn's rotary kernel).
Registered op: torch.ops.nanokern.rope(qkv, positions, cos, sin, n_rot, head_dim, interleaved,
fused) -> Tensor (the Triton kernel, nanokern/ops/triton/rope.py; float32 and bfloat16,
power-of-two head_dim).
(nanokern/arch/rope.py is another thing: the converters' row permutation for interleaved RoPE.)
"""
import torch

from nanokern.ops import _triton
from nanokern.ops.backends import resolve_backend

NUMERICS = ("hf", "fused")


def rope_tables(max_pos: int, head_dim: int, theta: float, dtype: torch.dtype = torch.float32, device=None):
    """cos, sin [max_pos, head_dim/2] as fp32 tensors, computed like LlamaRotaryEmbedding (fp32
    inv_freq and angles) and, for a low-precision dtype, rounded to it (transformers and
    flash-attn both hand rounded tables to the kernel)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim))
    pos = torch.arange(max_pos, dtype=torch.float32, device=device)
    freqs = pos[:, None] * inv_freq[None, :]
    cos, sin = freqs.cos(), freqs.sin()
    if dtype != torch.float32:
        cos, sin = cos.to(dtype).float(), sin.to(dtype).float()
    return cos, sin


def rope_ref(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_rot: int,
             head_dim: int, interleaved: bool, numerics: str = "hf") -> torch.Tensor:
    T = qkv.shape[0]
    x = qkv[:, : n_rot * head_dim].reshape(T, n_rot, head_dim)
    h = head_dim // 2
    # the pairs (i, i + d/2) or (2i, 2i + 1), taken as strided views (no gather)
    a, b = (x[..., 0::2], x[..., 1::2]) if interleaved else (x[..., :h], x[..., h:])
    c = cos.to(qkv.device)[positions][:, None, :]
    s = sin.to(qkv.device)[positions][:, None, :]
    if numerics == "fused" or qkv.dtype == torch.float32:
        a32, b32 = a.float(), b.float()
        ra, rb = (a32 * c - b32 * s).to(qkv.dtype), (b32 * c + a32 * s).to(qkv.dtype)
    else:
        c, s = c.to(qkv.dtype), s.to(qkv.dtype)
        ra, rb = a * c - b * s, b * c + a * s
    if interleaved:
        return torch.stack([ra, rb], -1).reshape(T, n_rot, head_dim)
    return torch.cat([ra, rb], -1)


def check(qkv, positions, cos, sin, n_rot: int, head_dim: int) -> None:
    if qkv.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"triton rope supports float32 and bfloat16, got {qkv.dtype}")
    if head_dim < 2 or head_dim & (head_dim - 1):
        raise ValueError(f"triton rope needs a power-of-two head_dim, got {head_dim}")
    if qkv.dim() != 2 or qkv.stride(1) != 1 or qkv.shape[1] < n_rot * head_dim:
        raise ValueError(f"qkv must be [T, >= n_rot*head_dim = {n_rot * head_dim}] with a contiguous last dim, "
                         f"got {tuple(qkv.shape)}")
    if positions.shape != (qkv.shape[0],):
        raise ValueError(f"positions must be [{qkv.shape[0]}], got {tuple(positions.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.dim() != 2 or t.shape[1] != head_dim // 2:
            raise ValueError(f"{name} table must be [max_pos, {head_dim // 2}], got {tuple(t.shape)}")


@torch.library.custom_op("nanokern::rope", mutates_args=(), schema=(
    "(Tensor qkv, Tensor positions, Tensor cos, Tensor sin, int n_rot, int head_dim, bool interleaved, bool fused) -> Tensor"))
def rope_triton(qkv, positions, cos, sin, n_rot, head_dim, interleaved, fused):
    check(qkv, positions, cos, sin, n_rot, head_dim)
    return _triton.kernels("rope").rope(qkv, positions, cos, sin, n_rot, head_dim, interleaved, fused=fused)


@rope_triton.register_fake
def _(qkv, positions, cos, sin, n_rot, head_dim, interleaved, fused):
    check(qkv, positions, cos, sin, n_rot, head_dim)
    return qkv.new_empty((qkv.shape[0], n_rot, head_dim))


def rope(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, n_rot: int,
         head_dim: int, interleaved: bool, backend: str = "torch", numerics: str = "hf") -> torch.Tensor:
    """Rotate the first n_rot heads of qkv [T, >= n_rot*d] -> [T, n_rot, d]; backend "torch",
    "triton" or "auto"."""
    if numerics not in NUMERICS:
        raise ValueError(f"unknown numerics {numerics!r}: choose one of {', '.join(NUMERICS)}")
    if resolve_backend(backend, qkv.device, "rope") == "triton":
        return rope_triton(qkv, positions, cos, sin, n_rot, head_dim, interleaved, numerics == "fused")
    return rope_ref(qkv, positions, cos, sin, n_rot, head_dim, interleaved, numerics)
