"""The parity forward's fused ops: Triton kernels (interpreted on CPU) vs their torch references,
and the torch references vs transformers' own functions. No fixtures needed."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from nanokern import rope as rope_perm
from nanokern.parity import kernels as K

DTYPES = [torch.float32, torch.bfloat16]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _randn(*shape, dtype=torch.float32, g=None, scale=1.0):
    return (torch.randn(*shape, generator=g or _gen()) * scale).to(dtype)


def _close(a, b, dtype, fp32_tol=2e-6):
    """fp32: rounding-level; bf16: bit-exact (the kernels reproduce torch's bf16 roundings)."""
    if dtype == torch.bfloat16:
        assert torch.equal(a, b), f"max diff {(a.float() - b.float()).abs().max()}"
    else:
        scale = max(1.0, float(b.abs().max()))
        assert float((a - b).abs().max()) <= fp32_tol * scale


# ---------------------------------------------------------------------------------------------
# RMSNorm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("numerics", ["hf", "fused"])
@pytest.mark.parametrize("shape", [(64, 64), (5, 3, 200)])
def test_rms_norm_triton_matches_torch(dtype, numerics, shape):
    g = _gen(1)
    x = _randn(*shape, dtype=dtype, g=g, scale=3)
    w = (1 + 0.1 * torch.randn(shape[-1], generator=g)).to(dtype)
    _close(K.rms_norm(x, w, 1e-5, "triton", numerics), K.rms_norm_ref(x, w, 1e-5, numerics), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm_ref_is_llama_rmsnorm(dtype):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    g = _gen(2)
    mod = LlamaRMSNorm(96, eps=1e-6)
    with torch.no_grad():
        mod.weight.copy_(1 + 0.1 * torch.randn(96, generator=g))
    mod = mod.to(dtype)
    x = _randn(16, 96, dtype=dtype, g=g, scale=2)
    assert torch.equal(K.rms_norm_ref(x, mod.weight.detach(), 1e-6), mod(x).detach())


def test_rms_norm_rounds_before_the_weight_in_bf16():
    """HF numerics (round x_hat, then times weight) and fused numerics differ in bf16: the
    option is real, and the default is HF's."""
    g = _gen(3)
    x = _randn(64, 128, dtype=torch.bfloat16, g=g)
    w = (1 + 0.3 * torch.randn(128, generator=g)).to(torch.bfloat16)
    hf = K.rms_norm(x, w, 1e-5, "triton", "hf")
    fused = K.rms_norm(x, w, 1e-5, "triton", "fused")
    assert not torch.equal(hf, fused)
    assert torch.equal(K.rms_norm(x, w, 1e-5, "triton"), hf)


# ---------------------------------------------------------------------------------------------
# RoPE


def _qkv(B, S, nq, nkv, d, dtype, seed=4):
    return _randn(B * S, (nq + 2 * nkv) * d, dtype=dtype, g=_gen(seed))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("interleaved", [False, True])
@pytest.mark.parametrize("numerics", ["hf", "fused"])
def test_rope_triton_matches_torch(dtype, interleaved, numerics):
    B, S, nq, nkv, d = 2, 24, 4, 2, 32
    qkv = _qkv(B, S, nq, nkv, d, dtype)
    pos = torch.arange(S).repeat(B)
    cos, sin = K.rope_tables(S, d, 10000.0, dtype)
    a = K.rope(qkv, pos, cos, sin, nq + nkv, d, interleaved, "triton", numerics)
    b = K.rope_ref(qkv, pos, cos, sin, nq + nkv, d, interleaved, numerics)
    _close(a, b, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_half_split_is_hf_apply_rotary_pos_emb(dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    B, S, nq, nkv, d, theta = 2, 20, 4, 2, 64, 500000.0
    cfg = LlamaConfig(hidden_size=nq * d, num_attention_heads=nq, num_key_value_heads=nkv, head_dim=d, rope_theta=theta,
                      intermediate_size=8, num_hidden_layers=1, vocab_size=8)
    qkv = _qkv(B, S, nq, nkv, d, dtype)
    x = qkv.view(B, S, nq + 2 * nkv, d)
    pos_ids = torch.arange(S)[None].expand(B, S)
    cos_hf, sin_hf = LlamaRotaryEmbedding(cfg)(x, pos_ids)
    qe, ke = apply_rotary_pos_emb(x[:, :, :nq].transpose(1, 2), x[:, :, nq:nq + nkv].transpose(1, 2), cos_hf, sin_hf)
    ref = torch.cat([qe.transpose(1, 2), ke.transpose(1, 2)], 2).reshape(B * S, nq + nkv, d)
    cos, sin = K.rope_tables(S, d, theta, dtype)
    for backend in ("torch", "triton"):
        got = K.rope(qkv, pos_ids.reshape(-1), cos, sin, nq + nkv, d, False, backend)
        assert torch.equal(got, ref), backend


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_rope_interleaved_is_gptj_and_the_row_permutation(backend):
    B, S, nq, nkv, d = 1, 16, 2, 1, 16
    qkv = _qkv(B, S, nq, nkv, d, torch.float32)
    pos = torch.arange(S)
    cos, sin = K.rope_tables(S, d, 10000.0)
    got = K.rope(qkv, pos, cos, sin, nq + nkv, d, True, backend)
    # explicit GPT-J: complex pairs (2i, 2i+1) times e^{i pos theta_i}
    inv = 1.0 / (10000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = pos[:, None].float() * inv
    xc = torch.view_as_complex(qkv[:, : (nq + nkv) * d].reshape(S, nq + nkv, d // 2, 2).contiguous())
    gptj = torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)[:, None]).reshape(S, nq + nkv, d)
    assert float((got - gptj).abs().max()) < 1e-5
    # documented equivalence: rope_interleaved(x)[P] == rope_half(x[P]) with P = hf_from_nt
    P = torch.as_tensor(rope_perm.hf_from_nt(d))
    x = qkv.view(S, nq + 2 * nkv, d)
    half = K.rope(x[..., P].reshape(S, -1).contiguous(), pos, cos, sin, nq + nkv, d, False, backend)
    assert torch.equal(got[..., P], half)
    # the two conventions really differ (beyond position 0, which is rotation-free)
    plain = K.rope(qkv, pos, cos, sin, nq + nkv, d, False, backend)
    assert float((plain[1:] - got[1:]).abs().max()) > 0.1
    assert torch.equal(plain[0], qkv[0, : (nq + nkv) * d].view(nq + nkv, d))


def test_rope_in_place_into_the_qkv_buffer():
    qkv = _qkv(1, 8, 2, 1, 16, torch.float32)
    pos = torch.arange(8)
    cos, sin = K.rope_tables(8, 16, 10000.0)
    want = K.rope_ref(qkv, pos, cos, sin, 3, 16, False)
    v = qkv[:, 48:].clone()
    K.triton_ops()["rope"].rope(qkv, pos, cos, sin, 3, 16, False, out=qkv)
    assert torch.equal(qkv[:, :48].view(8, 3, 16), want)
    assert torch.equal(qkv[:, 48:], v)


# ---------------------------------------------------------------------------------------------
# SwiGLU


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 320), (3, 7, 2000)])
def test_swiglu_triton_matches_torch(dtype, shape):
    gu = _randn(*shape, dtype=dtype, g=_gen(5), scale=3)
    _close(K.swiglu(gu, "triton"), K.swiglu_ref(gu), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swiglu_ref_is_llama_mlp_act(dtype):
    from transformers.activations import ACT2FN

    g = _gen(6)
    gate, up = _randn(32, 100, dtype=dtype, g=g, scale=3), _randn(32, 100, dtype=dtype, g=g)
    ref = ACT2FN["silu"](gate) * up
    _close(K.swiglu_ref(torch.cat([gate, up], -1)), ref, dtype)
    assert float((K.swiglu_ref(torch.cat([up, gate], -1)) - ref).float().abs().max()) > 0.1  # gate is the FIRST half


# ---------------------------------------------------------------------------------------------
# attention


def _explicit_attention(q, k, v):
    """Causal GQA written out: q head h uses kv head h // (nq/nkv)."""
    B, S, nq, d = q.shape
    rep = nq // k.shape[2]
    kk = k.float().repeat_interleave(rep, dim=2)
    vv = v.float().repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) / d**0.5
    s = s.masked_fill(torch.ones(S, S, dtype=torch.bool).triu(1), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 32, 4, 2, 16), (1, 45, 6, 2, 32), (1, 20, 2, 2, 64)])
def test_attention_gqa_causal(dtype, shape):
    B, S, nq, nkv, d = shape
    g = _gen(7)
    q, k, v = (_randn(B, S, n, d, dtype=dtype, g=g) for n in (nq, nkv, nkv))
    ref = _explicit_attention(q, k, v)
    tol = 2e-6 if dtype == torch.float32 else 2.0**-7
    for backend in ("torch", "triton"):
        got = K.attention(q, k, v, True, backend)
        assert got.dtype == dtype and got.shape == (B, S, nq, d)
        assert float((got.float() - ref).abs().max()) <= tol, backend
    # a wrong GQA grouping (h % nkv instead of h // rep) is visible
    if nkv > 1 and nq > nkv:
        wrong = _explicit_attention(q, k[:, :, torch.arange(nkv).roll(1)], v[:, :, torch.arange(nkv).roll(1)])
        assert float((K.attention(q, k, v, True, "triton").float() - wrong).abs().max()) > 0.05


def test_attention_is_causal_and_takes_strided_views():
    B, S, nq, nkv, d = 1, 40, 4, 2, 16
    qkv = _randn(B * S, (nq + 2 * nkv) * d, g=_gen(8))
    x = qkv.view(B, S, nq + 2 * nkv, d)
    q, k, v = x[:, :, :nq], x[:, :, nq:nq + nkv], x[:, :, nq + nkv:]
    a = K.attention(q, k, v, True, "triton")
    x2 = x.clone()
    x2[:, 30:] = torch.randn(B, S - 30, nq + 2 * nkv, d, generator=_gen(9))
    b = K.attention(x2[:, :, :nq], x2[:, :, nq:nq + nkv], x2[:, :, nq + nkv:], True, "triton")
    assert torch.equal(a[:, :30], b[:, :30]) and not torch.equal(a[:, 30:], b[:, 30:])
    assert float((a - K.attention_ref(q, k, v)).abs().max()) < 2e-6


# ---------------------------------------------------------------------------------------------
# dispatch and the --kernels table


def test_backend_resolution():
    assert K.resolve_backend("torch") == "torch"
    assert K.resolve_backend("triton") == "triton"
    assert K.resolve_backend("auto", "cpu") == "torch"
    assert K.resolve_backend("auto", "cuda") == "triton"
    with pytest.raises(ValueError):
        K.resolve_backend("cuda")


def test_triton_runs_interpreted_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    K.triton_ops()
    assert os.environ.get("TRITON_INTERPRET") == "1"


def test_check_kernels_passes_and_can_fail(monkeypatch):
    from nanokern.parity.kernel_check import check_kernels, format_checks

    rows = check_kernels("auto", dtypes=("fp32", "bf16"))
    assert rows and all(r.passed for r in rows), format_checks(rows)
    kinds = {(r.kernel, r.impl, r.dtype) for r in rows}
    for kernel in ("rms_norm", "rope half-split", "rope interleaved", "swiglu", "attention", "attention window"):
        for impl in ("torch", "triton"):
            assert (kernel, impl, "bf16") in kinds and (kernel, impl, "fp32") in kinds
    # a broken reference (up and gate swapped) is reported
    monkeypatch.setattr(K, "swiglu_ref", lambda gu: F.silu(gu.chunk(2, -1)[1]) * gu.chunk(2, -1)[0])
    bad = [r for r in check_kernels("torch", dtypes=("fp32",)) if not r.passed]
    assert bad and {r.kernel for r in bad} == {"swiglu"}
    assert "FAIL" in format_checks(bad)


def test_gpu_tiling_runs_right_in_the_interpreter():
    """The GPU launch configurations (other tiles, masks and grids than the CPU ones) give the
    same results, checked here in the interpreter."""
    T = K.triton_ops()
    g = _gen(10)
    x = _randn(8, 4096, dtype=torch.bfloat16, g=g)
    w = (1 + 0.1 * torch.randn(4096, generator=g)).to(torch.bfloat16)
    assert torch.equal(T["rms_norm"].rms_norm(x, w, 1e-5, config="gpu"), K.rms_norm_ref(x, w, 1e-5))
    for d, n_rot, tokens in ((16, 6, 16), (128, 12, 40)):
        qkv = _randn(tokens, (n_rot + 3) * d, dtype=torch.bfloat16, g=g)
        pos = torch.arange(tokens)
        cos, sin = K.rope_tables(tokens, d, 10000.0, torch.bfloat16)
        for il in (False, True):
            got = T["rope"].rope(qkv, pos, cos, sin, n_rot, d, il, config="gpu")
            assert torch.equal(got, K.rope_ref(qkv, pos, cos, sin, n_rot, d, il))
    gu = _randn(20, 3000, dtype=torch.bfloat16, g=g)
    assert torch.equal(T["swiglu"].swiglu(gu, config="gpu"), K.swiglu_ref(gu))
    q, k, v = (_randn(1, 100, n, 32, g=g) for n in (4, 2, 2))
    got = T["attention"].attention(q, k, v, config="gpu")
    assert float((got - _explicit_attention(q, k, v)).abs().max()) < 2e-6


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


# ---------------------------------------------------------------------------------------------
# sliding-window attention (Qwen2 sliding_window_size: w keys including the query's own)


def _explicit_window_attention(q, k, v, w):
    """Windowed causal GQA written out: query i sees keys j with i - w < j <= i."""
    B, S, nq, d = q.shape
    rep = nq // k.shape[2]
    kk = k.float().repeat_interleave(rep, dim=2)
    vv = v.float().repeat_interleave(rep, dim=2)
    s = torch.einsum("bqhd,bkhd->bhqk", q.float(), kk) / d**0.5
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    s = s.masked_fill(~((j <= i) & (j > i - w)), float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), vv)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 32, 6, 2, 16), (1, 45, 4, 2, 32)])
def test_attention_window_triton_matches_torch(dtype, shape):
    B, S, nq, nkv, d = shape
    g = _gen(11)
    q, k, v = (_randn(B, S, n, d, dtype=dtype, g=g) for n in (nq, nkv, nkv))
    tol = 2e-6 if dtype == torch.float32 else 2.0**-7
    for w in (1, 5, 6, 7, 17):
        ref = K.attention(q, k, v, True, "torch", window=w)
        got = K.attention(q, k, v, True, "triton", window=w)
        assert got.dtype == dtype and got.shape == (B, S, nq, d)
        assert float((got.float() - ref.float()).abs().max()) <= tol, w
        assert float((ref.float() - _explicit_window_attention(q, k, v, w)).abs().max()) <= tol, w
        assert not torch.isnan(got).any()
    # the window is real: w and w+1 differ, and a window of S keys is plain causal attention
    a = K.attention(q, k, v, True, "triton", window=6)
    b = K.attention(q, k, v, True, "triton", window=7)
    assert float((a.float() - b.float()).abs().max()) > 0.05
    assert float((a[:, :6].float() - b[:, :6].float()).abs().max()) == 0.0  # the first 6 queries see < 6 keys
    full = K.attention(q, k, v, True, "triton")
    assert float((K.attention(q, k, v, True, "triton", window=S).float() - full.float()).abs().max()) <= tol


def test_attention_window_one_key_is_its_own_value():
    q, k, v = (_randn(1, 20, n, 16, g=_gen(12)) for n in (4, 2, 2))
    want = v.repeat_interleave(2, dim=2)
    for backend in ("torch", "triton"):
        assert float((K.attention(q, k, v, True, backend, window=1) - want).abs().max()) < 1e-6, backend


def test_attention_window_is_transformers_sliding_window():
    """The boolean mask is transformers' own sliding_window_causal_mask_function (kv_idx >
    q_idx - sliding_window, causal), and the GPU tiling (64-row blocks, key blocks skipped
    left of the window) gives the same result in the interpreter."""
    from transformers.masking_utils import sliding_window_causal_mask_function

    S, w = 100, 6
    i, j = torch.arange(S)[:, None], torch.arange(S)[None, :]
    hf = sliding_window_causal_mask_function(w)(0, 0, i, j)
    assert torch.equal(K.attention_mask(S, True, w), hf)
    assert int(K.attention_mask(S, True, w).sum(1).max()) == w
    q, k, v = (_randn(1, S, n, 32, g=_gen(13)) for n in (4, 2, 2))
    got = K.triton_ops()["attention"].attention(q, k, v, window=w, config="gpu")
    assert float((got - _explicit_window_attention(q, k, v, w)).abs().max()) < 2e-6


def test_attention_window_needs_causal():
    q = _randn(1, 8, 2, 16)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError):
            K.attention(q, q, q, False, backend, window=4)
        with pytest.raises(ValueError):
            K.attention(q, q, q, True, backend, window=0)
