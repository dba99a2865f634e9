"""The decode path's attention: one (or a few) new queries over a KV cache. The torch reference
and the dispatch to its Triton kernel (nanokern/triton/decode_attention.py).

RoPE at an offset needs no new kernel: the parity forward's RoPE (torch reference and Triton
kernel, nanokern/parity/kernels.py) takes each token's absolute position, so a decode step
passes positions start..start+T-1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanokern.parity import kernels as K


def decode_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None,
                k_min: torch.Tensor | None = None) -> torch.Tensor:
    """[T, L] boolean, True where the query at position q_pos[t] sees cache slot j: 0 <= k_pos[j]
    <= q_pos[t] (k_pos -1 marks an empty slot) and, with a window w, k_pos[j] > q_pos[t] - w.
    k_min [B] (left padding): [B, T, L], batch b's queries see only k_pos[j] >= k_min[b], except
    that a padding query (q_pos < k_min[b]) sees itself (its unused output stays finite)."""
    if k_pos is None:
        raise ValueError("decode_mask needs the key positions")
    qp, kp = q_pos[:, None], k_pos[None, :].to(q_pos.device)
    m = (kp >= 0) & (kp <= qp)
    if window is not None:
        if window < 1:
            raise ValueError(f"a window (got {window}) must be >= 1 key")
        m &= kp > qp - window
    if k_min is not None:
        m = m[None] & ((kp[None] >= k_min.to(q_pos.device)[:, None, None]) | (kp == qp)[None])
    return m


def decode_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor,
                         window: int | None = None, mask: torch.Tensor | None = None,
                         k_min: torch.Tensor | None = None) -> torch.Tensor:
    """q [B,T,nq,d] over the cache k/v [B,L,nkv,d] through SDPA in fp32 (GQA: q head h uses kv
    head h // (nq/nkv)), rounded once to the input dtype -> [B,T,nq,d]. k_pos None: every slot
    is visible to every query (no mask; the caller vouches for it). mask: decode_mask(q_pos,
    k_pos, window, k_min) computed already (the decoder shares it between layers of one step).
    k_min [B]: left padding (decode_mask)."""
    qt, kt, vt = (t.transpose(1, 2).to(torch.float32) for t in (q, k, v))
    if mask is None and k_pos is not None:
        mask = decode_mask(q_pos, k_pos, window, k_min)
    if mask is not None and mask.dim() == 3:  # [B, T, L] -> [B, 1, T, L], every head alike
        mask = mask[:, None]
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=kt.shape[1] != qt.shape[1])
    return o.transpose(1, 2).to(q.dtype).contiguous()


_TRITON = None


def _triton():
    global _TRITON
    if _TRITON is None:
        K.triton_ops()  # sets TRITON_INTERPRET=1 without CUDA, checks the kernels are interpreted
        from nanokern.triton import decode_attention

        _TRITON = decode_attention
    return _TRITON


def decode_attention(q, k, v, q_pos, k_pos, window=None, backend="torch", mask=None, k_min=None):
    """k_pos None: every cache slot is visible (a full cache, one query past all of it). mask:
    the torch path's precomputed decode_mask (the Triton kernel masks by positions itself).
    k_min [B]: left padding (decode_mask)."""
    if backend == "triton":
        if k_pos is None:
            k_pos = torch.arange(k.shape[1], device=k.device)
        return _triton().decode_attention(q, k, v, q_pos, k_pos, window, k_min=k_min)
    return decode_attention_ref(q, k, v, q_pos, k_pos, window, mask, k_min)
