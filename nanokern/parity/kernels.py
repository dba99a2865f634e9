"""The parity forward's fused ops: plain-torch references and the backend dispatch.

Each op has a torch reference (written to match transformers' LLaMA numerics) and a Triton
kernel in nanokern/triton/. Backends: "torch", "triton", "auto" (triton on CUDA, torch on CPU).
The Triton modules are imported lazily; without CUDA, TRITON_INTERPRET=1 is set first so their
kernels run in the Triton interpreter. Ops: RMSNorm, RoPE (skipped by the forward on NoPE
layers), SwiGLU, causal GQA attention with an optional sliding window. The MoE routing and
expert dispatch have no kernel: plain torch in nanokern/parity/moe.py.

Numerics ("hf" or "fused") for RMSNorm and RoPE in low precision:
- "hf": the roundings transformers does (RMSNorm rounds x*rsqrt(var+eps) to the input dtype
  before the weight multiply; RoPE rounds q*cos, rotate_half(q)*sin and their sum).
- "fused": fp32 inside, one rounding at the end (what fused kernels such as flash-attn's
  RMSNorm and rotary do; Nanotron trains with those).
Both are identical in fp32 (up to fp32 rounding).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

BACKENDS = ("torch", "triton", "auto")
NUMERICS = ("hf", "fused")


def resolve_backend(backend: str, device: torch.device | str | None = None) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return "triton" if dev.type == "cuda" else "torch"
    return backend


_TRITON = None


def triton_ops():
    """The Triton kernel modules (imported once; interpreter mode when there is no CUDA)."""
    global _TRITON
    if _TRITON is None:
        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
        from nanokern.triton import attention, rms_norm, rope, swiglu

        if not torch.cuda.is_available():
            from triton.runtime.interpreter import InterpretedFunction

            if not isinstance(rms_norm._rms_norm_kernel, InterpretedFunction):
                raise RuntimeError(
                    "nanokern.triton kernels were imported before TRITON_INTERPRET=1 was set and there is no CUDA "
                    "device: set TRITON_INTERPRET=1 in the environment"
                )
        _TRITON = {"rms_norm": rms_norm, "rope": rope, "swiglu": swiglu, "attention": attention}
    return _TRITON


# ---------------------------------------------------------------------------------------------
# torch references


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float, numerics: str = "hf") -> torch.Tensor:
    """LlamaRMSNorm: fp32 variance, x * rsqrt(var + eps) in fp32, cast back, THEN times weight."""
    dtype = x.dtype
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    if numerics == "fused":
        return (h * weight.to(torch.float32)).to(dtype)
    return weight.to(dtype) * h.to(dtype)


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


def rope_ref(
    qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, n_rot: int, head_dim: int,
    interleaved: bool, numerics: str = "hf",
) -> torch.Tensor:
    """Rotate the first n_rot heads of qkv [T, >= n_rot*d] -> [T, n_rot, d].

    half-split pairs (i, i+d/2) as HF rotate_half; interleaved pairs (2i, 2i+1) as GPT-J.
    "hf" numerics: a*cos - b*sin in the input dtype (each op rounded), as HF's
    q*cos + rotate_half(q)*sin; "fused": fp32 then one rounding.
    """
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


def swiglu_ref(gu: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up with gate = first half of the last dim (LlamaMLP's act_fn(gate) * up)."""
    g, u = gu.chunk(2, dim=-1)
    return F.silu(g) * u


def attention_mask(S: int, causal: bool = True, window: int | None = None, device=None) -> torch.Tensor | None:
    """[S, S] boolean mask, True where query i sees key j: j <= i (causal) and i - window < j
    (window: the number of keys a query sees, itself included; flash-attn window_size=(w-1, 0),
    transformers' sliding_window). None when nothing is masked."""
    if window is None and not causal:
        return None
    i = torch.arange(S, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    m = torch.ones(S, S, dtype=torch.bool, device=device)
    if causal:
        m &= j <= i
    if window is not None:
        if window < 1 or not causal:
            raise ValueError(f"a window (got {window}) must be >= 1 key and needs causal attention")
        m &= j > i - window
    return m


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = True,
                  window: int | None = None) -> torch.Tensor:
    """Causal GQA attention through SDPA in fp32, rounded once to the input dtype.

    q [B,S,nq,d], k/v [B,S,nkv,d] -> [B,S,nq,d]; q head h uses kv head h // (nq/nkv).
    window w: query i sees keys i-w < j <= i (w keys including itself); None: all earlier keys.
    """
    qt, kt, vt = (t.transpose(1, 2).to(torch.float32) for t in (q, k, v))
    gqa = kt.shape[1] != qt.shape[1]
    if window is None:
        o = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, enable_gqa=gqa)
    else:
        mask = attention_mask(q.shape[1], causal, window, q.device)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=gqa)
    return o.transpose(1, 2).to(q.dtype).contiguous()


# ---------------------------------------------------------------------------------------------
# dispatch


def rms_norm(x, weight, eps, backend="torch", numerics="hf"):
    if backend == "triton":
        return triton_ops()["rms_norm"].rms_norm(x, weight, eps, fused=numerics == "fused")
    return rms_norm_ref(x, weight, eps, numerics)


def rope(qkv, positions, cos, sin, n_rot, head_dim, interleaved, backend="torch", numerics="hf"):
    if backend == "triton":
        return triton_ops()["rope"].rope(qkv, positions, cos, sin, n_rot, head_dim, interleaved, fused=numerics == "fused")
    return rope_ref(qkv, positions, cos, sin, n_rot, head_dim, interleaved, numerics)


def swiglu(gu, backend="torch"):
    if backend == "triton":
        return triton_ops()["swiglu"].swiglu(gu)
    return swiglu_ref(gu)


def attention(q, k, v, causal=True, backend="torch", window=None):
    if backend == "triton":
        return triton_ops()["attention"].attention(q, k, v, causal=causal, window=window)
    return attention_ref(q, k, v, causal, window)
