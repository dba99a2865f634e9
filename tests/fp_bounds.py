"""How far two implementations of the same op may be apart on ANY CPU: bounds derived from the
floating-point arithmetic, computed from the actual tensors of a test (never measured on a CPU).

Why a bound and not bit equality: the Triton kernels run, without a GPU, in Triton's interpreter,
which computes with numpy. numpy's float32 reductions (tl.reduce -> np.add.reduce) and tl.dot
(-> np.matmul -> OpenBLAS sgemm) pick their SIMD kernels per CPU (AVX2, AVX-512, ...), and so
sum in another order on another machine (OpenBLAS's Haswell sgemm vs its SkylakeX one moved a
bf16 logit of the Qwen2 fixture by one bf16 step); their exp is not torch's exp. Elementwise
+, -, *, / and sqrt are IEEE-rounded on every path: ops made only of those (RoPE, the casts)
stay bit-exact, and the tests hold them to that.

The bound, per output element, between implementations a and b of the same numerics:
- each computes an fp32 value within B of the exact one, B a worst-case forward error bound
  valid for ANY summation order: a sum of n terms is within gamma(n-1) * sum|terms| of the exact
  sum (Higham, Accuracy and Stability of Numerical Algorithms, §3.1), gamma(n) = n u / (1 - n u),
  u = 2^-24 the fp32 unit roundoff; every further IEEE operation adds one (1 + delta), |delta| <= u;
  exp is within EXP_ULPS ulps of the exact exp of its (rounded) argument, plus, for exps that
  scale their argument by log2(e) in fp32 first (a GPU's ex2.approx), |x| u relative;
- so the two fp32 values are within 2B of each other, and after the final rounding to the
  output dtype |RN(a) - RN(b)| <= |a - b| + ulp/2 + ulp/2 <= 2B + ulp(max(|RN a|, |RN b|))
  (1 ulp: a result may land on the neighbouring value); a rounding inside the op (HF's bf16
  roundings) carries its own ulp through the rest of the op the same way.
The exact values are computed in float64 from the inputs (float64's own error, ~2^-53 relative,
is 2^-29 of the bounds and ignored).
"""

from __future__ import annotations

import math

import torch

U = 2.0 ** -24  # fp32 unit roundoff
# exp's error in ulps: numpy's SIMD float32 exp is documented within 2.52 ulp (AVX512F), Sleef's
# expf_u10 (torch) 1.0 ulp, ATen's exp_u20 2.0 ulp, glibc's expf < 1 ulp: 4 covers them all.
EXP_ULPS = 4


def gamma(n) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error of n roundings (or a sum of n + 1 terms)."""
    return n * U / (1 - n * U)


def ulp(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at |x| (float64): 2^(e - p) for |x| in [2^(e-1), 2^e), p the
    significand bits (bf16 8, fp32 24); the subnormal spacing below the normal range."""
    p, emin = {torch.bfloat16: (8, -126), torch.float32: (24, -126), torch.float16: (11, -14)}[dtype]
    a = x.double().abs()
    _, e = torch.frexp(a)
    sub = 2.0 ** (emin - p + 1)
    return torch.where(a < 2.0 ** emin, torch.full_like(a, sub), torch.ldexp(torch.ones_like(a), e - p))


def _exp_rel(arg: torch.Tensor) -> torch.Tensor:
    """Relative error bound of an fp32 exp of `arg` (float64): EXP_ULPS ulps (2 u each, at most)
    plus |arg| u for an argument scaled by log2(e) in fp32 before a base-2 exponential."""
    return 2 * EXP_ULPS * U + 2 * U * arg.abs()


def _finish(fp32_gap: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """2B (fp32_gap) plus the output rounding: one ulp of the larger result in a 16-bit dtype;
    an fp32 output's rounding is inside B already."""
    if a.dtype == torch.float32:
        return fp32_gap
    return fp32_gap + ulp(torch.maximum(a.double().abs(), b.double().abs()), a.dtype)


def assert_within(a: torch.Tensor, b: torch.Tensor, allowed: torch.Tensor, what: str) -> float:
    """|a - b| <= allowed elementwise (both finite); returns the worst |a - b| / allowed."""
    a, b = a.detach().cpu(), b.detach().cpu()
    assert a.shape == b.shape and a.dtype == b.dtype, (what, a.shape, b.shape, a.dtype, b.dtype)
    assert torch.isfinite(a).all() and torch.isfinite(b).all(), f"{what}: non-finite values"
    diff = (a.double() - b.double()).abs()
    allowed = allowed.to(diff.dtype).expand_as(diff)
    over = diff > allowed
    if over.any():
        i = int(torch.argmax((diff - allowed).reshape(-1)))
        raise AssertionError(f"{what}: {int(over.sum())} of {diff.numel()} elements beyond the derived bound; worst "
                             f"|{float(a.reshape(-1)[i])} - {float(b.reshape(-1)[i])}| = {float(diff.reshape(-1)[i]):.3e} "
                             f"> {float(allowed.reshape(-1)[i]):.3e}")
    return float((diff / allowed.clamp_min(1e-300)).max()) if diff.numel() else 0.0


# ---------------------------------------------------------------------------------------------
# per op: the allowed |a - b| between two implementations, from the op's inputs and both outputs


def rms_norm_allowed(x, weight, eps, numerics, a, b) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps): the sum of n squares (x^2 exact in fp32 for bf16 x, else one
    rounding), / n, + eps, sqrt, reciprocal, times x: gamma(n + 6) relative on y (each step's
    relative error passes through sqrt at most unchanged); "fused": times weight, one rounding
    more; "hf": y rounded to the dtype first (one ulp of y, times |w|), then times weight."""
    n = x.shape[-1]
    x64, w64 = x.double(), weight.double()
    y = x64 * torch.rsqrt((x64 * x64).mean(-1, keepdim=True) + eps)
    if numerics == "fused" or a.dtype == torch.float32:
        return _finish(2 * gamma(n + 7) * (y * w64).abs(), a, b)
    rho = gamma(n + 6)
    y_gap = ulp(y.abs() * (1 + rho), a.dtype) + 2 * rho * y.abs()  # |RN(y_a) - RN(y_b)|
    return _finish(w64.abs() * y_gap, a, b)


def swiglu_allowed(gu, a, b) -> torch.Tensor:
    """silu(g) = g / (1 + exp(-g)) in fp32: exp's error, the add, the division (one more for
    g * sigmoid(g)); bf16: silu rounded to bf16 (one ulp, times |up|), the product rounded."""
    g, up = gu.double().chunk(2, dim=-1)
    act = g * torch.sigmoid(g)
    rho = _exp_rel(g) + gamma(3)
    if a.dtype == torch.float32:
        return _finish(2 * (rho + gamma(1)) * (act * up).abs(), a, b)
    act_gap = ulp(act.abs() * (1 + rho), a.dtype) + 2 * rho * act.abs()
    return _finish(up.abs() * act_gap, a, b)


def attention_allowed(q, k, v, causal, window, a, b) -> torch.Tensor:
    """o_i = sum_j p_ij v_j / sum_j p_ij, p_ij = exp(s_ij - m_i), s_ij = scale q_i . k_j.
    Scores: a length-d dot, the scale multiply and the scale's own rounding: |ds| <= gamma(d + 2)
    scale sum|q k|. Each p_ij then carries a relative error eta_ij <= |ds_ij| + u |s_ij - m_i|
    (the subtraction) + exp's error; an online softmax rescales the partial sums at most once
    per key (exp, two products): L gamma(2 EXP_ULPS + 2) for L visible keys. The two sums of L
    terms add gamma(L) each, the division u. First order in t = eta + 2 gamma(L):
    |o~ - o| <= t (sum p|v| / sum p + |o|) + u |o|; expm1(t) for t covers the higher orders."""
    B, S, nq, d = q.shape
    rep = nq // k.shape[2]
    q64 = q.double().transpose(1, 2)
    k64 = k.double().repeat_interleave(rep, dim=2).transpose(1, 2)
    v64 = v.double().repeat_interleave(rep, dim=2).transpose(1, 2)
    scale = 1.0 / math.sqrt(d)
    s = q64 @ k64.transpose(-1, -2) * scale  # [B, h, S, S]
    mag = q64.abs() @ k64.abs().transpose(-1, -2) * scale
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    sees = torch.ones(S, S, dtype=torch.bool)
    if causal:
        sees &= j <= i
    if window is not None:
        sees &= j > i - window
    s = s.masked_fill(~sees, float("-inf"))
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - m)
    D = p.sum(-1, keepdim=True)
    o = (p @ v64) / D
    o_abs = (p @ v64.abs()) / D
    gap = (s - m).masked_fill(~sees, 0.0).abs()
    eta = (gamma(d + 2) * mag + U * gap + _exp_rel(gap)).masked_fill(~sees, 0.0).amax(-1, keepdim=True)
    L = sees.sum(-1, keepdim=True).to(torch.float64)
    eta = eta + L * gamma(2 * EXP_ULPS + 2)
    t = eta + 2 * L * U / (1 - L * U)
    bound = torch.expm1(t) * (o_abs + o.abs()) + U * o.abs()
    return _finish(2 * bound.transpose(1, 2), a, b)


# ---------------------------------------------------------------------------------------------
# a forward whose every fused op is checked: the torch reference runs (and is what flows on),
# and the other backend runs on the very same inputs, held to the bound (RoPE: bit-exact)


class CheckedOps:
    """Inside `with CheckedOps():` the parity forward (nanokern.parity.native, .moe) computes with
    the torch reference of every fused op, and each call also runs `other` (the Triton kernels)
    on the same inputs and asserts it within the derived bound of the reference's result.
    `perturb`: {op: f(out) -> out} applied to the other backend's output (negative controls)."""

    OPS = ("rms_norm", "rope", "attention", "swiglu")

    def __init__(self, other: str = "triton", perturb: dict | None = None):
        self.other = other
        self.perturb = perturb or {}
        self.calls = {op: 0 for op in self.OPS}
        self.elements = {op: 0 for op in self.OPS}
        self.differ = {op: 0 for op in self.OPS}  # elements not bit-equal (within the bound)
        self.worst = {op: 0.0 for op in self.OPS}  # the largest |diff| / bound
        self._undo = []

    def _note(self, op, got, ref, allowed):
        if op in self.perturb:
            got = self.perturb[op](got)
        self.calls[op] += 1
        self.elements[op] += ref.numel()
        self.differ[op] += int((got != ref).sum())
        if allowed is None:  # bit-exact
            assert torch.equal(got, ref), f"{op}: {int((got != ref).sum())} elements differ (must be bit-exact)"
        else:
            self.worst[op] = max(self.worst[op], assert_within(got, ref, allowed(got, ref), f"{op} ({self.other})"))

    def __enter__(self):
        from nanokern.ops import attention as A
        from nanokern.ops import rms_norm as N
        from nanokern.ops import rope as R
        from nanokern.ops import swiglu as G
        from nanokern.parity import moe as MOE

        rms, rope, attn, swiglu = N.rms_norm, R.rope, A.attention, G.swiglu
        other = self.other

        def rms_checked(x, weight, eps, *, backend="torch", numerics="hf"):
            ref = rms(x, weight, eps, backend="torch", numerics=numerics)
            got = rms(x, weight, eps, backend=other, numerics=numerics)
            self._note("rms_norm", got, ref, lambda a, b: rms_norm_allowed(x, weight, eps, numerics, a, b))
            return ref

        def rope_checked(qkv, positions, cos, sin, *, backend="torch", **kw):
            ref = rope(qkv, positions, cos, sin, backend="torch", **kw)
            self._note("rope", rope(qkv, positions, cos, sin, backend=other, **kw), ref, None)
            return ref

        def attn_checked(q, k, v, *, causal=True, window=None, backend="torch"):
            ref = attn(q, k, v, causal=causal, window=window, backend="torch")
            got = attn(q, k, v, causal=causal, window=window, backend=other)
            self._note("attention", got, ref, lambda a, b: attention_allowed(q, k, v, causal, window, a, b))
            return ref

        def swiglu_checked(gu, *, backend="torch"):
            ref = swiglu(gu, backend="torch")
            self._note("swiglu", swiglu(gu, backend=other), ref, lambda a, b: swiglu_allowed(gu, a, b))
            return ref

        for mod, name, fn in ((N, "rms_norm", rms_checked), (R, "rope", rope_checked), (A, "attention", attn_checked),
                              (G, "swiglu", swiglu_checked), (MOE, "swiglu", swiglu_checked)):
            self._undo.append((mod, name, getattr(mod, name)))
            setattr(mod, name, fn)
        return self

    def __exit__(self, *exc):
        for mod, name, fn in reversed(self._undo):
            setattr(mod, name, fn)
        self._undo.clear()
        return False

    def summary(self) -> dict:
        return {op: {"calls": self.calls[op], "elements": self.elements[op], "differ": self.differ[op],
                     "worst_ratio": self.worst[op]} for op in self.OPS}
