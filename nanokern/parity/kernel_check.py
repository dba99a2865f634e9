"""`nanokern parity --kernels`: every fused op against transformers' own functions, over shapes
and dtypes. The oracles are the tests' own: each op's torch reference (nanokern/ops/<op>.py) is
checked against transformers, and each Triton kernel against transformers and its reference
("torch reference" rows).

- RMSNorm vs transformers' LlamaRMSNorm module.
- RoPE (half-split) vs apply_rotary_pos_emb with cos/sin from LlamaRotaryEmbedding, on q and k
  cut from a fused qkv buffer (GQA shapes).
- RoPE (interleaved) vs an explicit GPT-J reference (complex multiplication of the pairs
  (2i, 2i+1) by e^{i pos theta_i}), and vs apply_rotary_pos_emb through the documented row
  permutation: permuting each head's rows by P = [0, 2, ..., d-2, 1, 3, ..., d-1] turns
  interleaved RoPE into half-split RoPE (rope_i(x)[P] == rope_half(x[P])).
- SwiGLU vs LlamaMLP's act_fn(gate) * up (ACT2FN["silu"]).
- Attention vs transformers' eager_attention_forward (repeat_kv GQA, additive causal mask),
  computed in fp32 on the same inputs; windowed attention with the mask from transformers'
  sliding_window_causal_mask_function (Qwen2's sliding window: w keys including the query's own).
- Decode attention (the generation's: a few new queries over a KV cache in ring order) vs
  eager_attention_forward with transformers' causal / sliding-window mask of the positions.

Tolerances: fp32 max|diff| <= 1e-5 x max(1, max|ref|) (fp32 rounding); bf16 two bf16 spacings of
the largest value (2^-6 x max|ref|). The kernels do transformers' bf16 roundings, so against
transformers they are bit-exact or one rounding flip apart; against the single-rounding GPT-J
reference HF-style RoPE can be up to 1.5 spacings off (three roundings); attention computes in
fp32, the reference too.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from types import SimpleNamespace

import torch

from nanokern.ops import attention as A
from nanokern.ops import decode_attention as DA
from nanokern.ops import rms_norm as N
from nanokern.ops import rope as R
from nanokern.ops import swiglu as G
from nanokern.parity.options import torch_dtype


@dataclass
class KernelCheck:
    kernel: str
    impl: str  # torch | triton
    against: str
    dtype: str
    shape: str
    max_abs: float
    tol: float
    seconds: float

    @property
    def passed(self) -> bool:
        return self.max_abs <= self.tol

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _tol(ref: torch.Tensor, dtype: torch.dtype) -> float:
    scale = max(1.0, float(ref.abs().max())) if dtype == torch.float32 else float(ref.abs().max())
    return 1e-5 * scale if dtype == torch.float32 else 2.0**-6 * scale


def _maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


RMS_SHAPES = [(64, 64), (37, 200), (8, 4096)]
ROPE_SHAPES = [(2, 32, 4, 2, 16), (1, 17, 8, 2, 64), (2, 8, 2, 2, 128)]  # B, S, nq, nkv, d
SWIGLU_SHAPES = [(64, 160), (33, 1000)]
ATTN_SHAPES = [(2, 32, 4, 2, 16), (1, 50, 8, 2, 32), (1, 70, 4, 4, 64)]
WINDOW_SHAPES = [(2, 32, 6, 2, 16, 6), (1, 50, 4, 2, 32, 7)]  # B, S, nq, nkv, d, window
DECODE_SHAPES = [(2, 1, 4, 2, 16, 20, None), (1, 3, 6, 2, 32, 24, 7)]  # B, T new queries, nq, nkv, d, cache L, window


def _impls(backend: str) -> list[str]:
    if backend == "auto":
        return ["torch", "triton"]
    if backend not in ("torch", "triton"):
        raise ValueError(f"unknown backend {backend!r}")
    return [backend]


def check_kernels(backend: str = "auto", dtypes=("fp32", "bf16"), seed: int = 0) -> list[KernelCheck]:
    """Run every kernel check; backend "auto" checks both the torch references and the Triton
    kernels (interpreted without CUDA)."""
    from transformers import LlamaConfig
    from transformers.activations import ACT2FN
    from transformers.masking_utils import causal_mask_function, sliding_window_causal_mask_function
    from transformers.models.llama.modeling_llama import (
        LlamaRMSNorm, LlamaRotaryEmbedding, apply_rotary_pos_emb, eager_attention_forward,
    )

    from nanokern.arch import rope as rope_perm

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    impls = _impls(backend)
    g = torch.Generator().manual_seed(seed)
    rows: list[KernelCheck] = []

    def randn(*shape, dtype):
        return torch.randn(*shape, generator=g).to(device=dev, dtype=dtype)

    def eager(q, k, v, mask):
        """transformers' eager attention in fp32 (repeat_kv GQA, additive mask), in q's dtype."""
        mod = SimpleNamespace(num_key_value_groups=q.shape[2] // k.shape[2], training=False)
        out, _ = eager_attention_forward(mod, q.transpose(1, 2).float(), k.transpose(1, 2).float(),
                                         v.transpose(1, 2).float(), mask, q.shape[-1] ** -0.5)
        return out.to(q.dtype)

    def record(kernel, impl, against, dt, shape, fn, ref, oracle=None):
        """fn(impl) against ref (transformers); a Triton row also against oracle() (the torch reference)."""
        t0 = time.perf_counter()
        got = fn(impl)
        secs = time.perf_counter() - t0
        rows.append(KernelCheck(kernel, impl, against, dt, shape, _maxdiff(got, ref), _tol(ref, got.dtype), round(secs, 4)))
        if impl != "torch" and oracle is not None:
            want = oracle()
            rows.append(KernelCheck(kernel, impl, "torch reference", dt, shape, _maxdiff(got, want), _tol(want, got.dtype),
                                    round(secs, 4)))

    for dname in dtypes:
        dt = torch_dtype(dname)
        dname = "fp32" if dt == torch.float32 else "bf16"
        # RMSNorm ------------------------------------------------------------------------------
        for T, H in RMS_SHAPES:
            eps = 1e-5
            mod = LlamaRMSNorm(H, eps)
            with torch.no_grad():
                mod.weight.copy_(1 + 0.1 * torch.randn(H, generator=g))
            mod = mod.to(device=dev, dtype=dt)
            x = randn(T, H, dtype=dt) * 3
            ref = mod(x).detach()
            for impl in impls:
                record("rms_norm", impl, "LlamaRMSNorm", dname, f"{T}x{H}",
                       lambda be: N.rms_norm(x, mod.weight.detach(), eps, backend=be), ref,
                       lambda: N.rms_norm_ref(x, mod.weight.detach(), eps))
        # RoPE ---------------------------------------------------------------------------------
        for B, S, nq, nkv, d in ROPE_SHAPES:
            theta = 10000.0 if d < 128 else 500000.0
            cfg = LlamaConfig(hidden_size=nq * d, num_attention_heads=nq, num_key_value_heads=nkv, head_dim=d,
                              rope_theta=theta, intermediate_size=8, num_hidden_layers=1, vocab_size=8,
                              max_position_embeddings=max(S, 8))
            rot = LlamaRotaryEmbedding(cfg).to(dev)
            qkv = randn(B, S, nq + 2 * nkv, d, dtype=dt)
            pos_ids = torch.arange(S, device=dev)[None].expand(B, S)
            cos_hf, sin_hf = rot(qkv, pos_ids)
            positions = pos_ids.reshape(-1)
            cos, sin = R.rope_tables(S, d, theta, dt, dev)
            n_rot = nq + nkv
            flat = qkv.reshape(B * S, -1)
            shape = f"B{B} S{S} q{nq} kv{nkv} d{d}"

            def hf_rope(x):  # x [B,S,heads,d] -> q,k rotated by transformers, back to [B*S, nq+nkv, d]
                q = x[:, :, :nq].transpose(1, 2)
                k = x[:, :, nq:nq + nkv].transpose(1, 2)
                qe, ke = apply_rotary_pos_emb(q, k, cos_hf, sin_hf)
                return torch.cat([qe.transpose(1, 2), ke.transpose(1, 2)], 2).reshape(B * S, nq + nkv, d)

            ref = hf_rope(qkv)
            for impl in impls:
                record("rope half-split", impl, "apply_rotary_pos_emb", dname, shape,
                       lambda be: R.rope(flat, positions, cos, sin, n_rot=n_rot, head_dim=d, interleaved=False, backend=be),
                       ref, lambda: R.rope_ref(flat, positions, cos, sin, n_rot, d, False))
            # interleaved vs explicit GPT-J (complex pairs), computed in fp32
            inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32, device=dev) / d))
            ang = torch.arange(S, dtype=torch.float32, device=dev)[:, None] * inv[None]
            x32 = qkv[:, :, : nq + nkv].float()
            xc = torch.view_as_complex(x32.reshape(B, S, nq + nkv, d // 2, 2).contiguous())
            gptj = torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)[None, :, None, :])
            gptj = gptj.reshape(B * S, nq + nkv, d).to(dt)
            for impl in impls:
                record("rope interleaved", impl, "GPT-J complex reference", dname, shape,
                       lambda be: R.rope(flat, positions, cos, sin, n_rot=n_rot, head_dim=d, interleaved=True, backend=be),
                       gptj, lambda: R.rope_ref(flat, positions, cos, sin, n_rot, d, True))
            # interleaved == half-split after the per-head row permutation P
            P = torch.as_tensor(rope_perm.hf_from_nt(d), device=dev)
            ref_perm = hf_rope(qkv[..., P])
            for impl in impls:
                record("rope interleaved", impl, "apply_rotary_pos_emb via rows P", dname, shape,
                       lambda be: R.rope(flat, positions, cos, sin, n_rot=n_rot, head_dim=d, interleaved=True,
                                         backend=be)[..., P], ref_perm)
        # SwiGLU -------------------------------------------------------------------------------
        act = ACT2FN["silu"]
        for T, I in SWIGLU_SHAPES:
            gate, up = randn(T, I, dtype=dt) * 3, randn(T, I, dtype=dt)
            ref = act(gate) * up
            gu = torch.cat([gate, up], -1)
            for impl in impls:
                record("swiglu", impl, "LlamaMLP act_fn(gate)*up", dname, f"{T}x2*{I}",
                       lambda be: G.swiglu(gu, backend=be), ref, lambda: G.swiglu_ref(gu))
        # attention ----------------------------------------------------------------------------
        for B, S, nq, nkv, d in ATTN_SHAPES:
            q, k, v = randn(B, S, nq, d, dtype=dt), randn(B, S, nkv, d, dtype=dt), randn(B, S, nkv, d, dtype=dt)
            mask = torch.full((S, S), float("-inf"), device=dev).triu(1)[None, None]
            ref = eager(q, k, v, mask)
            for impl in impls:
                record("attention", impl, "eager_attention_forward (fp32)", dname, f"B{B} S{S} q{nq} kv{nkv} d{d}",
                       lambda be: A.attention(q, k, v, causal=True, backend=be), ref, lambda: A.attention_ref(q, k, v))
        for B, S, nq, nkv, d, w in WINDOW_SHAPES:
            q, k, v = randn(B, S, nq, d, dtype=dt), randn(B, S, nkv, d, dtype=dt), randn(B, S, nkv, d, dtype=dt)
            pos = torch.arange(S, device=dev)
            sees = sliding_window_causal_mask_function(w)(0, 0, pos[:, None], pos[None, :])
            mask = torch.zeros(S, S, device=dev).masked_fill(~sees, float("-inf"))[None, None]
            ref = eager(q, k, v, mask)
            for impl in impls:
                record("attention window", impl, "eager + sliding_window mask (fp32)", dname,
                       f"B{B} S{S} q{nq} kv{nkv} d{d} w{w}", lambda be: A.attention(q, k, v, window=w, backend=be), ref,
                       lambda: A.attention_ref(q, k, v, True, w))
        # decode attention: T new queries over a cache whose slots are in ring order
        for B, T, nq, nkv, d, L, w in DECODE_SHAPES:
            q, k, v = randn(B, T, nq, d, dtype=dt), randn(B, L, nkv, d, dtype=dt), randn(B, L, nkv, d, dtype=dt)
            k_pos, q_pos = torch.randperm(L, generator=g).to(dev), torch.arange(L - T, L, device=dev)
            fn = causal_mask_function if w is None else sliding_window_causal_mask_function(w)
            sees = fn(0, 0, q_pos[:, None], k_pos[None, :])
            mask = torch.zeros(T, L, device=dev).masked_fill(~sees, float("-inf"))[None, None]
            ref = eager(q, k, v, mask)
            for impl in impls:
                record("decode attention", impl, "eager + causal/window mask (fp32)", dname,
                       f"B{B} T{T} q{nq} kv{nkv} d{d} L{L}" + ("" if w is None else f" w{w}"),
                       lambda be: DA.decode_attention(q, k, v, q_pos, k_pos, window=w, backend=be), ref,
                       lambda: DA.decode_attention_ref(q, k, v, q_pos, k_pos, w))
    return rows


def format_checks(rows: list[KernelCheck]) -> str:
    lines = [f"{'kernel':17s} {'impl':6s} {'dtype':5s} {'shape':24s} {'against':34s} {'max|diff|':>10s} {'tol':>9s}  verdict"]
    for r in rows:
        lines.append(f"{r.kernel:17s} {r.impl:6s} {r.dtype:5s} {r.shape:24s} {r.against:34s} {r.max_abs:10.3e} {r.tol:9.2e}  "
                     + ("ok" if r.passed else "FAIL"))
    bad = sum(not r.passed for r in rows)
    lines.append(f"{len(rows) - bad}/{len(rows)} checks pass" + ("" if not bad else f"; {bad} FAIL"))
    return "\n".join(lines)
