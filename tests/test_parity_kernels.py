"""The parity forward's fused ops: each backend (the torch reference and the Triton kernel, on
the CPU and, where there is one, on a CUDA device: the `kernel_backend` parameter) against the
torch reference and transformers' own functions. No fixtures needed. Inputs are made on the CPU
(the same values on every device) and moved to the device under test."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from fp_bounds import assert_within, rms_norm_allowed, swiglu_allowed
from marks import slow_except
from nanokern.arch import rope as rope_perm
from nanokern.ops import _triton
from nanokern.ops import attention as A
from nanokern.ops import rms_norm as N
from nanokern.ops import rope as R
from nanokern.ops import swiglu as G

DTYPES = [torch.float32, torch.bfloat16]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype=torch.float32, g=None, scale=1.0):
    return (torch.randn(*shape, generator=g or _gen()) * scale).to(dtype)


def _close(a, b, dtype, fp32_tol=2e-6, backend="torch", allowed=None):
    """allowed(a, b): the bound of tests/fp_bounds.py, for an op that sums (RMSNorm) or takes an
    exp (SwiGLU): a Triton kernel within it (its interpreter sums with numpy, in an order and
    with an exp that depend on the CPU), the torch backend (the reference's own arithmetic) bit
    for bit in bf16. Without one (RoPE: elementwise IEEE arithmetic): bf16 bit-exact, fp32
    rounding-level."""
    a, b = a.cpu(), b.cpu()
    if allowed is not None and backend != "torch":
        assert_within(a, b, allowed(a, b), f"{backend} vs reference")
    elif dtype == torch.bfloat16:
        assert torch.equal(a, b), f"max diff {(a.float() - b.float()).abs().max()}"
    else:
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= fp32_tol * scale


def _on(device, *ts):
    return tuple(t.to(device) for t in ts)


# ---------------------------------------------------------------------------------------------
# RMSNorm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numerics", ["hf", "fused"])
@pytest.mark.parametrize("shape", [(64, 64), (5, 3, 200)])
def test_rms_norm_matches_the_reference(kernel_backend, dtype, numerics, shape):
    device, backend = kernel_backend
    g = _gen(1)
    x = _randn(*shape, dtype=dtype, g=g, scale=3)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype)
    got = N.rms_norm(*_on(device, x, w), 1e-5, backend=backend, numerics=numerics)
    assert got.device.type == device
    _close(got, N.rms_norm_ref(x, w, 1e-5, numerics), dtype, backend=backend,
           allowed=lambda a, b: rms_norm_allowed(x, w, 1e-5, numerics, a, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_is_llama_rmsnorm(kernel_backend, dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    device, backend = kernel_backend
    g = _gen(2)
    mod = LlamaRMSNorm(96, eps=1e-6)
    with torch.no_grad():
        mod.weight.copy_(1 + 0.1 * torch.randn(96, generator=g))
    mod = mod.to(device=device, dtype=dtype)
    x = _randn(16, 96, dtype=dtype, g=g, scale=2).to(device)
    got, want = N.rms_norm(x, mod.weight.detach(), 1e-6, backend=backend), mod(x).detach()
    if backend == "torch":  # the reference is LlamaRMSNorm's arithmetic, bit for bit
        assert torch.equal(got, want)
    _close(got, want, dtype, backend=backend,  # the kernel: summed in another order
           allowed=lambda a, b: rms_norm_allowed(x.cpu(), mod.weight.detach().cpu(), 1e-6, "hf", a, b))


def test_rms_norm_rounds_before_the_weight_in_bf16(kernel_backend):
    """HF numerics (round x_hat, then times weight) and fused numerics differ in bf16: the
    option is real, and the default is HF's."""
    device, backend = kernel_backend
    g = _gen(3)
    x = _randn(64, 128, dtype=torch.bfloat16, g=g)
    w = (1 + 0.3 * torch.randn(128, generator=g)).to(torch.bfloat16)
    x, w = _on(device, x, w)
    hf = N.rms_norm(x, w, 1e-5, backend=backend, numerics="hf")
    fused = N.rms_norm(x, w, 1e-5, backend=backend, numerics="fused")
    assert not torch.equal(hf, fused)
    assert torch.equal(N.rms_norm(x, w, 1e-5, backend=backend), hf)


# ---------------------------------------------------------------------------------------------
# RoPE


def _qkv(B, S, nq, nkv, d, dtype, seed=4):
    return _randn(B * S, (nq + 2 * nkv) * d, dtype=dtype, g=_gen(seed))


def _rope(qkv, pos, cos, sin, n_rot, d, interleaved, backend, numerics="hf"):
    return R.rope(qkv, pos, cos, sin, n_rot=n_rot, head_dim=d, interleaved=interleaved, backend=backend,
                  numerics=numerics)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("numerics", ["hf", "fused"])
def test_rope_matches_the_reference(kernel_backend, dtype, interleaved, numerics):
    device, backend = kernel_backend
    B, S, nq, nkv, d = 2, 24, 4, 2, 32
    qkv = _qkv(B, S, nq, nkv, d, dtype)
    pos = torch.arange(S).repeat(B)
    cos, sin = R.rope_tables(S, d, 10000.0, dtype)
    got = _rope(*_on(device, qkv, pos, cos, sin), nq + nkv, d, interleaved, backend, numerics)
    _close(got, R.rope_ref(qkv, pos, cos, sin, nq + nkv, d, interleaved, numerics), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_half_split_is_hf_apply_rotary_pos_emb(kernel_backend, dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    device, backend = kernel_backend
    B, S, nq, nkv, d, theta = 2, 20, 4, 2, 64, 500000.0
    cfg = LlamaConfig(hidden_size=nq * d, num_attention_heads=nq, num_key_value_heads=nkv, head_dim=d, rope_theta=theta,
                      intermediate_size=8, num_hidden_layers=1, vocab_size=8)
    qkv = _qkv(B, S, nq, nkv, d, dtype).to(device)
    x = qkv.view(B, S, nq + 2 * nkv, d)
    pos_ids = torch.arange(S, device=device)[None].expand(B, S)
    cos_hf, sin_hf = LlamaRotaryEmbedding(cfg).to(device)(x, pos_ids)
    qe, ke = apply_rotary_pos_emb(x[:, :, :nq].transpose(1, 2), x[:, :, nq:nq + nkv].transpose(1, 2), cos_hf, sin_hf)
    ref = torch.cat([qe.transpose(1, 2), ke.transpose(1, 2)], 2).reshape(B * S, nq + nkv, d)
    cos, sin = R.rope_tables(S, d, theta, dtype, device)
    got = _rope(qkv, pos_ids.reshape(-1), cos, sin, nq + nkv, d, False, backend)
    assert torch.equal(got, ref)


def test_rope_interleaved_is_gptj_and_the_row_permutation(kernel_backend):
    device, backend = kernel_backend
    B, S, nq, nkv, d = 1, 16, 2, 1, 16
    qkv = _qkv(B, S, nq, nkv, d, torch.float32)
    pos = torch.arange(S)
    cos, sin = R.rope_tables(S, d, 10000.0)
    got = _rope(*_on(device, qkv, pos, cos, sin), nq + nkv, d, True, backend).cpu()
    # explicit GPT-J: complex pairs (2i, 2i+1) times e^{i pos theta_i}
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv
    xc = torch.view_as_complex(qkv[:, : (nq + nkv) * d].reshape(S, nq + nkv, d // 2, 2).contiguous())
    gptj = torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)[:, None]).reshape(S, nq + nkv, d)
    assert float((got - gptj).abs().max()) < 1e-5
    # documented equivalence: rope_interleaved(x)[P] == rope_half(x[P]) with P = hf_from_nt
    P = torch.as_tensor(rope_perm.hf_from_nt(d))
    x = qkv.view(S, nq + 2 * nkv, d)
    permuted = x[..., P].reshape(S, -1).contiguous()
    half = _rope(*_on(device, permuted, pos, cos, sin), nq + nkv, d, False, backend).cpu()
    assert torch.equal(got[..., P], half)
    # the two conventions really differ (beyond position 0, which is rotation-free)
    plain = _rope(*_on(device, qkv, pos, cos, sin), nq + nkv, d, False, backend).cpu()
    assert float((plain[1:] - got[1:]).abs().max()) > 0.1
    assert torch.equal(plain[0], qkv[0, : (nq + nkv) * d].view(nq + nkv, d))


def test_rope_kernel_in_place_into_the_qkv_buffer(kernel_backend):
    device, backend = kernel_backend
    if backend != "triton":
        pytest.skip("the launcher's out= (the torch reference returns a new tensor)")
    qkv = _qkv(1, 8, 2, 1, 16, torch.float32)
    pos = torch.arange(8)
    cos, sin = R.rope_tables(8, 16, 10000.0)
    want = R.rope_ref(qkv, pos, cos, sin, 3, 16, False)
    v = qkv[:, 48:].clone()
    buf, pos_d, cos_d, sin_d = _on(device, qkv, pos, cos, sin)
    _triton.kernels("rope").rope(buf, pos_d, cos_d, sin_d, 3, 16, False, out=buf)
    assert torch.equal(buf[:, :48].view(8, 3, 16).cpu(), want)
    assert torch.equal(buf[:, 48:].cpu(), v)


# ---------------------------------------------------------------------------------------------
# SwiGLU


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 320), (3, 7, 2000)])
def test_swiglu_matches_the_reference(kernel_backend, dtype, shape):
    device, backend = kernel_backend
    gu = _randn(*shape, dtype=dtype, g=_gen(5), scale=3)
    _close(G.swiglu(gu.to(device), backend=backend), G.swiglu_ref(gu), dtype, backend=backend,
           allowed=lambda a, b: swiglu_allowed(gu, a, b))


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_is_llama_mlp_act(kernel_backend, dtype):
    from transformers.activations import ACT2FN

    device, backend = kernel_backend
    g = _gen(6)
    gate, up = _on(device, _randn(32, 100, dtype=dtype, g=g, scale=3), _randn(32, 100, dtype=dtype, g=g))
    ref = ACT2FN["silu"](gate) * up
    gu = torch.cat([gate, up], -1)
    _close(G.swiglu(gu, backend=backend), ref, dtype, backend=backend, allowed=lambda a, b: swiglu_allowed(gu.cpu(), a, b))
    swapped = G.swiglu(torch.cat([up, gate], -1), backend=backend)
    assert float((swapped - ref).float().abs().max()) > 0.1  # gate is the FIRST half


# ---------------------------------------------------------------------------------------------
# attention


def _explicit_attention(q, k, v, w=None):
    """Causal GQA written out (q head h uses kv head h // (nq/nkv)); w: query i sees keys
    i - w < j <= i."""
    q, k, v = q.cpu(), k.cpu(), v.cpu()
    B, S, nq, d = q.shape
    rep = nq // k.shape[2]
    kk = k.float().repeat_interleave(rep, dim=2)
    vv = v.float().repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) / d**0.5
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    sees = (j <= i) if w is None else (j <= i) & (j > i - w)
    s = s.masked_fill(~sees, float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vv)


def _attn(q, k, v, backend, window=None, causal=True):
    return A.attention(q, k, v, causal=causal, window=window, backend=backend)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 32, 4, 2, 16), (1, 45, 6, 2, 32), (1, 20, 2, 2, 64)])
def test_attention_gqa_causal(kernel_backend, dtype, shape):
    device, backend = kernel_backend
    B, S, nq, nkv, d = shape
    g = _gen(7)
    q, k, v = _on(device, *(_randn(B, S, n, d, dtype=dtype, g=g) for n in (nq, nkv, nkv)))
    ref = _explicit_attention(q, k, v)
    tol = 2e-6 if dtype == torch.float32 else 2.0**-7
    got = _attn(q, k, v, backend)
    assert got.dtype == dtype and got.shape == (B, S, nq, d) and got.device.type == device
    assert float((got.float().cpu() - ref).abs().max()) <= tol
    # a wrong GQA grouping (h % nkv instead of h // rep) is visible
    if nkv > 1 and nq > nkv:
        roll = torch.arange(nkv, device=device).roll(1)
        wrong = _explicit_attention(q, k[:, :, roll], v[:, :, roll])
        assert float((got.float().cpu() - wrong).abs().max()) > 0.05


def test_attention_is_causal_and_takes_strided_views(kernel_backend):
    device, backend = kernel_backend
    B, S, nq, nkv, d = 1, 40, 4, 2, 16
    x = _randn(B * S, (nq + 2 * nkv) * d, g=_gen(8)).view(B, S, nq + 2 * nkv, d)
    x2 = x.clone()
    x2[:, 30:] = torch.randn(B, S - 30, nq + 2 * nkv, d, generator=_gen(9))
    x, x2 = _on(device, x, x2)
    a = _attn(x[:, :, :nq], x[:, :, nq:nq + nkv], x[:, :, nq + nkv:], backend)
    b = _attn(x2[:, :, :nq], x2[:, :, nq:nq + nkv], x2[:, :, nq + nkv:], backend)
    assert torch.equal(a[:, :30], b[:, :30]) and not torch.equal(a[:, 30:], b[:, 30:])
    ref = A.attention_ref(x[:, :, :nq].cpu(), x[:, :, nq:nq + nkv].cpu(), x[:, :, nq + nkv:].cpu())
    assert float((a.cpu() - ref).abs().max()) < 2e-6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", slow_except([(2, 32, 6, 2, 16), (1, 45, 4, 2, 32)], [(2, 32, 6, 2, 16)],
                                                 unpack=False))
def test_attention_window_matches_the_reference(kernel_backend, dtype, shape):
    """Sliding window (Qwen2 sliding_window_size: w keys including the query's own)."""
    device, backend = kernel_backend
    B, S, nq, nkv, d = shape
    g = _gen(11)
    q, k, v = _on(device, *(_randn(B, S, n, d, dtype=dtype, g=g) for n in (nq, nkv, nkv)))
    tol = 2e-6 if dtype == torch.float32 else 2.0**-7
    for w in (1, 5, 6, 7, 17):
        got = _attn(q, k, v, backend, window=w)
        ref = A.attention_ref(q.cpu(), k.cpu(), v.cpu(), True, w)
        assert got.dtype == dtype and got.shape == (B, S, nq, d)
        assert float((got.float().cpu() - ref.float()).abs().max()) <= tol, w
        assert float((ref.float() - _explicit_attention(q, k, v, w)).abs().max()) <= tol, w
        assert not torch.isnan(got).any()
    # the window is real: w and w+1 differ, and a window of S keys is plain causal attention
    a, b = _attn(q, k, v, backend, window=6), _attn(q, k, v, backend, window=7)
    assert float((a.float() - b.float()).abs().max()) > 0.05
    assert float((a[:, :6].float() - b[:, :6].float()).abs().max()) == 0.0  # the first 6 queries see < 6 keys
    full = _attn(q, k, v, backend)
    assert float((_attn(q, k, v, backend, window=S).float() - full.float()).abs().max()) <= tol


def test_attention_window_one_key_is_its_own_value(kernel_backend):
    device, backend = kernel_backend
    q, k, v = _on(device, *(_randn(1, 20, n, 16, g=_gen(12)) for n in (4, 2, 2)))
    want = v.repeat_interleave(2, dim=2)
    assert float((_attn(q, k, v, backend, window=1) - want).abs().max()) < 1e-6


def test_attention_window_mask_is_transformers_sliding_window():
    from transformers.masking_utils import sliding_window_causal_mask_function

    S, w = 100, 6
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    hf = sliding_window_causal_mask_function(w)(0, 0, i, j)
    assert torch.equal(A.attention_mask(S, True, w), hf)
    assert int(A.attention_mask(S, True, w).sum(1).max()) == w


def test_attention_window_needs_causal(kernel_backend):
    device, backend = kernel_backend
    q = _randn(1, 8, 2, 16).to(device)
    with pytest.raises(ValueError):
        _attn(q, q, q, backend, window=4, causal=False)
    with pytest.raises(ValueError):
        _attn(q, q, q, backend, window=0)


# ---------------------------------------------------------------------------------------------
# the GPU tiling, the loader, the --kernels table, the bench script


def test_gpu_tiling_runs_right(kernel_backend):
    """The GPU launch configurations (other tiles, masks and grids than the CPU ones, and
    key blocks skipped left of a window) give the reference's results: in the interpreter on the
    CPU, compiled on a GPU."""
    device, backend = kernel_backend
    if backend != "triton":
        pytest.skip("the Triton launchers' tile sets")
    T = _triton.kernels
    g = _gen(10)
    x = _randn(8, 4096, dtype=torch.bfloat16, g=g)
    w = (1 + 0.1 * torch.randn(4096, generator=g)).to(torch.bfloat16)
    got, want = T("rms_norm").rms_norm(*_on(device, x, w), 1e-5, config="gpu").cpu(), N.rms_norm_ref(x, w, 1e-5)
    assert_within(got, want, rms_norm_allowed(x, w, 1e-5, "hf", got, want), "rms_norm, GPU tiles")
    for d, n_rot, tokens in ((16, 6, 16), (128, 12, 40)):
        qkv = _randn(tokens, (n_rot + 3) * d, dtype=torch.bfloat16, g=g)
        pos = torch.arange(tokens)
        cos, sin = R.rope_tables(tokens, d, 10000.0, torch.bfloat16)
        for il in (False, True):
            got = T("rope").rope(*_on(device, qkv, pos, cos, sin), n_rot, d, il, config="gpu")
            assert torch.equal(got.cpu(), R.rope_ref(qkv, pos, cos, sin, n_rot, d, il))
    gu = _randn(20, 3000, dtype=torch.bfloat16, g=g)
    got, want = T("swiglu").swiglu(gu.to(device), config="gpu").cpu(), G.swiglu_ref(gu)
    assert_within(got, want, swiglu_allowed(gu, got, want), "swiglu, GPU tiles")
    q, k, v = (_randn(1, 100, n, 32, g=g) for n in (4, 2, 2))
    got = T("attention").attention(*_on(device, q, k, v), config="gpu")
    assert float((got.cpu() - _explicit_attention(q, k, v)).abs().max()) < 2e-6
    got = T("attention").attention(*_on(device, q, k, v), window=6, config="gpu")
    assert float((got.cpu() - _explicit_attention(q, k, v, 6)).abs().max()) < 2e-6


_LOADER = """
import torch
from triton.runtime.interpreter import InterpretedFunction
import nanokern.ops.triton.swiglu as early  # imported behind the loader's back: compiled for a GPU
from nanokern.ops import _triton
from nanokern.ops.rms_norm import rms_norm, rms_norm_ref
assert _triton.interpreted()
mod = _triton.kernels("rms_norm")
assert isinstance(mod._rms_norm_kernel, InterpretedFunction), type(mod._rms_norm_kernel)
x, w = torch.randn(4, 32), torch.randn(32)
assert torch.allclose(rms_norm(x, w, 1e-5, backend="triton"), rms_norm_ref(x, w, 1e-5), atol=1e-6)
try:
    _triton.kernels("swiglu")
except RuntimeError as e:
    assert "imported before the Triton interpreter was switched on" in str(e), e
else:
    raise AssertionError("a kernel module compiled for a GPU was accepted without one")
print("ok")
"""


@pytest.mark.slow  # a second interpreter (4-5 s); in the loop the interpreter is on from conftest
def test_loader_switches_the_interpreter_on_without_cuda():
    """Without a CUDA device and without TRITON_INTERPRET in the environment, the loader runs
    the kernels interpreted, and refuses a kernel module someone imported before it (its
    kernels were decorated for a GPU that is not there)."""
    import os

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: the kernels are compiled")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    r = subprocess.run([sys.executable, "-c", _LOADER], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_check_kernels_passes_and_can_fail(monkeypatch):
    from nanokern.parity.kernel_check import check_kernels, format_checks

    rows = check_kernels("auto", dtypes=("fp32", "bf16"))
    assert rows and all(r.passed for r in rows), format_checks(rows)
    kinds = {(r.kernel, r.impl, r.dtype) for r in rows}
    for kernel in ("rms_norm", "rope half-split", "rope interleaved", "swiglu", "attention", "attention window",
                   "decode attention"):
        for impl in ("torch", "triton"):
            assert (kernel, impl, "bf16") in kinds and (kernel, impl, "fp32") in kinds
    assert {r.kernel for r in rows if r.against == "torch reference"} >= {"rms_norm", "swiglu", "attention"}
    # a broken reference (up and gate swapped) is reported: the torch rows against transformers,
    # and the Triton rows against the reference
    monkeypatch.setattr(G, "swiglu_ref", lambda gu: F.silu(gu.chunk(2, -1)[1]) * gu.chunk(2, -1)[0])
    bad = [r for r in check_kernels("auto", dtypes=("fp32",)) if not r.passed]
    assert bad and {r.kernel for r in bad} == {"swiglu"}
    assert {(r.impl, r.against) for r in bad} == {("torch", "LlamaMLP act_fn(gate)*up"), ("triton", "torch reference")}
    assert "FAIL" in format_checks(bad)


def test_bench_script_skips_on_cpu_and_smoke_runs(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_parity_kernels.py"
    spec = importlib.util.spec_from_file_location("bench_parity_kernels", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    if not torch.cuda.is_available():
        csv_before = Path(bench.CSV_PATH).read_bytes() if Path(bench.CSV_PATH).exists() else None
        assert bench.main([]) == 0
        assert "skipping" in capsys.readouterr().out
        assert (Path(bench.CSV_PATH).read_bytes() if Path(bench.CSV_PATH).exists() else None) == csv_before
    assert bench.main(["--smoke"]) == 0  # tiny shapes through the timed code paths, results checked
    out = capsys.readouterr().out
    assert "rms_norm" in out and "swiglu" in out and "rope" in out
