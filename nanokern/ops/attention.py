"""Causal GQA attention over a whole sequence, with an optional sliding window: the mask, the
torch reference (SDPA in fp32), the Triton op and the dispatch.

q [B, S, nq, d], k/v [B, S, nkv, d] (any strides with a contiguous last dim) -> [B, S, nq, d];
q head h uses kv head h // (nq / nkv). Window w: query i sees keys i-w < j <= i (w keys
including itself; flash-attn window_size=(w-1, 0), transformers' sliding_window).
Registered op: torch.ops.nanokern.attention(q, k, v, causal, window) -> Tensor (the Triton
kernel, nanokern/ops/triton/attention.py; float32 and bfloat16, power-of-two head_dim).
"""
import torch
import torch.nn.functional as F

from nanokern.ops import _triton
from nanokern.ops.backends import resolve_backend


def attention_mask(S: int, causal: bool = True, window: int | None = None, device=None) -> torch.Tensor | None:
    """[S, S] boolean mask, True where query i sees key j: j <= i (causal) and i - window < j.
    None when nothing is masked."""
    if window is None and not causal:
        return None
    check_window(causal, window)
    i = torch.arange(S, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    m = torch.ones(S, S, dtype=torch.bool, device=device)
    if causal:
        m &= j <= i
    if window is not None:
        m &= j > i - window
    return m


def check_window(causal: bool, window: int | None) -> None:
    if window is not None and (not causal or int(window) < 1):
        raise ValueError(f"a window (got {window}) must be >= 1 key and needs causal attention")


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                  window: int | None = None) -> torch.Tensor:
    """Through SDPA in fp32, rounded once to the input dtype."""
    qt, kt, vt = (t.transpose(1, 2).to(torch.float32) for t in (q, k, v))
    gqa = kt.shape[1] != qt.shape[1]
    if window is None:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa)
    else:
        mask = attention_mask(q.shape[1], causal, window, q.device)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
    return o.transpose(1, 2).to(q.dtype).contiguous()


def check_dtypes(what: str, q, k, v) -> None:
    """The Triton kernels' dtypes: float32 or bfloat16, the same for q, k and v."""
    if q.dtype not in (torch.float32, torch.bfloat16) or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"triton {what} supports float32 and bfloat16 (same for q, k, v), got {q.dtype}, {k.dtype}, "
                        f"{v.dtype}")


def check(q, k, v, causal: bool, window: int | None) -> None:
    check_dtypes("attention", q, k, v)
    if q.dim() != 4 or k.dim() != 4:
        raise ValueError(f"q and k must be [B, S, heads, d], got {tuple(q.shape)}, {tuple(k.shape)}")
    B, S, nq, d = q.shape
    nkv = k.shape[2]
    if k.shape != (B, S, nkv, d) or v.shape != k.shape:
        raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit")
    if nkv < 1 or nq % nkv:
        raise ValueError(f"{nq} q heads are not a multiple of {nkv} kv heads")
    check_window(causal, window)
    if d & (d - 1):
        raise ValueError(f"triton attention needs a power-of-two head_dim, got {d}")
    if any(t.stride(-1) != 1 for t in (q, k, v)):
        raise ValueError("q, k, v need a contiguous last dim")


@torch.library.custom_op("nanokern::attention", mutates_args=(),
                         schema="(Tensor q, Tensor k, Tensor v, bool causal, int? window) -> Tensor")
def attention_triton(q, k, v, causal, window):
    check(q, k, v, causal, window)
    return _triton.kernels("attention").attention(q, k, v, causal=causal, window=window)


@attention_triton.register_fake
def _(q, k, v, causal, window):
    check(q, k, v, causal, window)
    return q.new_empty(q.shape)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True, window: int | None = None,
              backend: str = "torch") -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v with GQA; backend "torch", "triton" or "auto"."""
    if resolve_backend(backend, q.device, "attention") == "triton":
        return attention_triton(q, k, v, causal, window)
    return attention_ref(q, k, v, causal, window)
