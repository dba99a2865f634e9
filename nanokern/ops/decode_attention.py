"""Attention of a few new queries over a KV cache (the decode step): the position mask, the torch
reference (SDPA in fp32), the Triton op and the dispatch.

q [B, T, nq, d] (T new tokens, usually 1), k/v [B, L, nkv, d] the cache (views into a
preallocated buffer), q_pos [T] and k_pos [L] absolute positions shared by the batch (k_pos -1:
an empty slot; slots in any order, e.g. a rolling window's ring). Query at position p sees slot j
iff 0 <= k_pos[j] <= p and, with a window w, k_pos[j] > p - w. Left padding: k_min [B], batch
b's first real position; its real queries see only k_pos >= k_min[b], a padding query sees itself.
Registered op: torch.ops.nanokern.decode_attention(q, k, v, q_pos, k_pos, window, k_min) ->
Tensor (the Triton kernel, nanokern/ops/triton/decode_attention.py; float32 and bfloat16).
"""
import torch
import torch.nn.functional as F

from nanokern.ops import _triton
from nanokern.ops.attention import check_dtypes
from nanokern.ops.backends import resolve_backend


def decode_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None,
                k_min: torch.Tensor | None = None) -> torch.Tensor:
    """[T, L] boolean, True where the query at q_pos[t] sees slot j; with k_min [B, T, L]."""
    if window is not None and window < 1:
        raise ValueError(f"a window (got {window}) must be >= 1 key")
    qp, kp = q_pos[:, None], k_pos[None, :].to(q_pos.device)
    m = (kp >= 0) & (kp <= qp)
    if window is not None:
        m &= kp > qp - window
    if k_min is not None:
        m = m[None] & ((kp[None] >= k_min.to(q_pos.device)[:, None, None]) | (kp == qp)[None])
    return m


def decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                         k_pos: torch.Tensor | None, window: int | None = None, mask: torch.Tensor | None = None,
                         k_min: torch.Tensor | None = None) -> torch.Tensor:
    """Through SDPA in fp32, rounded once to the input dtype. k_pos None: every slot is visible
    (no mask; the caller vouches for it). mask: decode_mask(...) computed already (the decoder
    shares it between the layers of one step)."""
    qt, kt, vt = (t.transpose(1, 2).to(torch.float32) for t in (q, k, v))
    if mask is None and k_pos is not None:
        mask = decode_mask(q_pos, k_pos, window, k_min)
    if mask is not None and mask.dim() == 3:  # [B, T, L] -> [B, 1, T, L], every head alike
        mask = mask[:, None]
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=kt.shape[1] != qt.shape[1])
    return o.transpose(1, 2).to(q.dtype).contiguous()


def check(q, k, v, q_pos, k_pos, window, k_min) -> None:
    check_dtypes("decode attention", q, k, v)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, T|L, heads, d], got {tuple(q.shape)}, {tuple(k.shape)}")
    B, T, nq, d = q.shape
    L, nkv = k.shape[1], k.shape[2]
    if k.shape != (B, L, nkv, d) or v.shape != k.shape or q_pos.shape != (T,) or k_pos.shape != (L,):
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, q_pos {tuple(q_pos.shape)}, "
                         f"k_pos {tuple(k_pos.shape)} do not fit")
    if nkv < 1 or nq % nkv:
        raise ValueError(f"{nq} q heads are not a multiple of {nkv} kv heads")
    if window is not None and int(window) < 1:
        raise ValueError(f"a window (got {window}) must be >= 1 key")
    if d & (d - 1):
        raise ValueError(f"triton decode attention needs a power-of-two head_dim, got {d}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v need a contiguous last dim")
    if k_min is not None and k_min.shape != (B,):
        raise ValueError(f"k_min must be [{B}], got {tuple(k_min.shape)}")


@torch.library.custom_op("nanokern::decode_attention", mutates_args=(), schema=(
    "(Tensor q, Tensor k, Tensor v, Tensor q_pos, Tensor k_pos, int? window, Tensor? k_min) -> Tensor"))
def decode_attention_triton(q, k, v, q_pos, k_pos, window, k_min):
    check(q, k, v, q_pos, k_pos, window, k_min)
    return _triton.kernels("decode_attention").decode_attention(q, k, v, q_pos, k_pos, window, k_min=k_min)


@decode_attention_triton.register_fake
def _(q, k, v, q_pos, k_pos, window, k_min):
    check(q, k, v, q_pos, k_pos, window, k_min)
    return q.new_empty(q.shape)


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
                     k_pos: torch.Tensor | None, *, window: int | None = None, backend: str = "torch",
                     mask: torch.Tensor | None = None, k_min: torch.Tensor | None = None) -> torch.Tensor:
    """-> [B, T, nq, d]; backend "torch", "triton" or "auto". k_pos None: every cache slot is
    visible. mask: the torch path's precomputed decode_mask (the Triton kernel masks by
    positions itself). k_min [B]: left padding."""
    if resolve_backend(backend, q.device, "decode_attention") == "triton":
        if k_pos is None:
            k_pos = torch.arange(k.shape[1], device=k.device)
        return decode_attention_triton(q, k, v, q_pos, k_pos, window, k_min)
    return decode_attention_ref(q, k, v, q_pos, k_pos, window, mask, k_min)
