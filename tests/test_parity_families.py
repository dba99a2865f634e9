"""Parity on the real Qwen2Config fixtures (README "Qwen2Config set"): q/k/v bias, NoPE layers,
sliding window at TP=2, MoE with a gated shared expert, bf16. The native forward against
transformers (every family's class) and against Nanotron's own logits, with the torch and the
Triton backends; negative controls (one semantic deliberately wrong in the native forward,
NativeModel(fault=...)) that the real checks must FAIL.

Runtime: the fixtures are tiny (hidden <= 96, 4 layers) and the tokens are [2, 32].
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import nanokern.parity.check as check
from fixtures_path import QWEN2_FIXTURES, REPO, fixture
from marks import slow_except
from nanokern.errors import NanokernError
from nanokern.formats.nanotron import read_checkpoint
from nanokern.parity import reproduce_logits, run_parity
from nanokern.parity_cli import parity as parity_cmd
from nanokern.parity.native import NativeModel

NAMES = list(QWEN2_FIXTURES)
BACKENDS = ["torch", "triton"]
HF_CLASS = {  # what nanokern's export picks (the first class that holds the model exactly)
    "qwen2_dense_tp1_pp1": "LlamaForCausalLM", "qwen2_dense_tp1_pp1_bf16": "LlamaForCausalLM",
    "qwen2_bias_tp1_pp2": "Qwen2ForCausalLM", "smollm3_nope_tp1_pp1_tied": "SmolLM3ForCausalLM",
    "qwen2_swa_tp2_pp1": "Qwen2ForCausalLM", "qwen2_moe_tp1_pp2": "Qwen2MoeForCausalLM",
}
# the fast loop: the torch backend on one fixture per family, Triton on the TP=2 window fixture
# (its kernels against the reference on every backend: test_parity_kernels.py); CI runs them all
CASES = [(n, b) for n in NAMES for b in BACKENDS]
FAST = [(n, "torch") for n in NAMES if n != "qwen2_dense_tp1_pp1_bf16"] + [("qwen2_swa_tp2_pp1", "triton")]


@pytest.mark.parametrize("name,backend", slow_except(CASES, FAST))
def test_parity_fp32_every_family(name, backend, exports):
    rep = run_parity(fixture("nanotron", name), exports(name), dtype="fp32", backend=backend)
    assert rep.passed, rep.table()
    lg = rep.logits.metrics
    assert rep.backend == backend and rep.hf_class == HF_CLASS[name]
    assert (rep.tp, rep.pp) == QWEN2_FIXTURES[name]
    assert lg["max_abs"] <= 1e-4 * max(1.0, lg["scale"]) and lg["top1"] == 1.0 and lg["top1_counted"] >= 32
    assert lg["scale"] > 2  # std-0.1 weights: logits with structure, not near-uniform
    assert len(rep.rows) == 4 + 2 and all(r.metrics["rel_l2"] <= 1e-5 for r in rep.rows)
    assert any(n.startswith("features: ") for n in rep.notes) or name.startswith("qwen2_dense")


@pytest.mark.parametrize("backend", slow_except(BACKENDS, ["torch"]))
def test_parity_bf16(backend, exports):
    name = "qwen2_dense_tp1_pp1_bf16"
    rep = run_parity(fixture("nanotron", name), exports(name), dtype="bf16", backend=backend)
    assert rep.passed, rep.table()
    lg = rep.logits
    assert lg.floor["max_abs"] > 1e-3  # the floor is real bf16 noise, not zero
    assert lg.metrics["max_abs"] <= 2 * lg.floor["max_abs"] + 1e-6 * lg.metrics["scale"]


@pytest.mark.parametrize("name", slow_except(["qwen2_bias_tp1_pp2", "smollm3_nope_tp1_pp1_tied", "qwen2_swa_tp2_pp1",
                                               "qwen2_moe_tp1_pp2"], ["qwen2_moe_tp1_pp2"]))
def test_parity_bf16_forward_of_fp32_checkpoints(name, exports):
    """The fp32 feature checkpoints computed in bf16 (bias added in bf16, float32 router kept):
    within the self-calibrated bf16 rule against transformers in fp32."""
    rep = run_parity(fixture("nanotron", name), exports(name), dtype="bf16", backend="torch")
    assert rep.passed, rep.table()
    assert rep.logits.floor["max_abs"] > 1e-3


@pytest.mark.parametrize("name,backend", slow_except(CASES, [("qwen2_dense_tp1_pp1_bf16" if n == "qwen2_dense_tp1_pp1" else n, b)
                                                            for n, b in FAST]))
def test_reproduces_nanotron_logits(name, backend):
    lr = reproduce_logits(fixture("nanotron", name), fixture("logits", f"{name}.safetensors"), backend=backend)
    assert lr.passed, lr.line()
    assert lr.argmax_agree == 1.0 and lr.numerics == "nanotron"
    if name.endswith("_bf16"):
        assert lr.dtype == "bf16" and lr.max_abs <= 0.03  # torch: bit-exact under AVX2 GEMMs, see below
    else:
        assert lr.dtype == "fp32" and lr.max_abs <= 1e-5  # measured 2e-6 to 4e-6 (README: <= 4e-6)


def test_bf16_checkpoint_in_fp32_reproduces_the_fp32_forward_logits():
    """The bf16 files run in fp32 against Nanotron's fp32 forward of the same files."""
    name = "qwen2_dense_tp1_pp1_bf16"
    lr = reproduce_logits(fixture("nanotron", name), fixture("logits", f"{name}.fp32fwd.safetensors"),
                          backend="torch", dtype="fp32")
    assert lr.max_abs <= 1e-5 and lr.argmax_agree == 1.0, lr.line()


_BITEXACT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from fp_bounds import CheckedOps
from nanokern.parity import reproduce_logits
out = {}
for name in sys.argv[3:]:
    ck, logits = sys.argv[2] + "/nanotron/" + name, sys.argv[2] + "/logits/" + name + ".safetensors"
    lr = reproduce_logits(ck, logits, backend="torch", device="cpu")
    out[name + "/torch"] = [lr.dtype, lr.numerics, lr.max_abs, lr.argmax_agree]
    with CheckedOps("triton") as ops:  # raises on a kernel output beyond its bound
        lr = reproduce_logits(ck, logits, backend="torch", device="cpu")
    out[name + "/triton"] = [lr.dtype, lr.numerics, lr.max_abs, lr.argmax_agree, ops.summary()]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_bf16_logits_bit_exact_with_avx2_gemms():
    """Nanotron's bf16 forward, reproduced bit for bit by the torch backend: "nanotron" numerics
    (Qwen2Config: plain input_layernorm, fused post-attention/final norms and RoPE; LlamaConfig:
    all fused). The fixtures' logits came from CPU bf16 GEMMs that round like oneDNN's AVX2
    kernels; CPUs with AVX512-BF16/AMX take other GEMM paths (1.95e-3 apart on the LLaMA set,
    2.1e-2 on Qwen2), so the check runs in a subprocess with oneDNN capped at AVX2.

    The Triton backend cannot promise bits on every CPU: without a GPU its kernels run in the
    interpreter on numpy, whose reductions and sgemm (OpenBLAS) take other SIMD paths per CPU
    (OpenBLAS's Haswell sgemm puts one attention output of qwen2_dense_tp1_pp1_bf16 on the
    neighbouring bf16 value, and the logits move by 0.015625). So on the same forward every
    Triton kernel runs on the very inputs the bit-exact torch forward hands its reference, and
    is held to the bound derived in tests/fp_bounds.py (RoPE, elementwise IEEE arithmetic only:
    bit-exact)."""
    names = ["qwen2_dense_tp1_pp1_bf16", "tp1_pp1", "tp2_pp2", "tp2_pp1_tied"]
    root = fixture("nanotron", names[0]).parents[1]
    for n in names:
        fixture("nanotron", n)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", _BITEXACT, str(REPO / "tests"), str(root), *names], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert len(got) == 2 * len(names)
    for key, (dtype, numerics, max_abs, agree, *checked) in got.items():
        assert dtype == "bf16" and numerics == "nanotron" and max_abs == 0.0 and agree == 1.0, (key, max_abs)
        if key.endswith("/triton"):  # every kernel ran, on every layer
            assert all(c["calls"] >= 1 for c in checked[0].values()), (key, checked)


@pytest.mark.parametrize("name", slow_except(NAMES, ["qwen2_dense_tp1_pp1_bf16"]))
def test_triton_kernels_within_the_derived_bound_on_the_bf16_forward(name):
    """Every Triton kernel call of the bf16 forward (this CPU's own GEMMs) against the torch
    reference on the same inputs, within the bound of tests/fp_bounds.py; the fp32 feature
    checkpoints computed in bf16 too (windows, NoPE, biases, the MoE experts' SwiGLU)."""
    from fp_bounds import CheckedOps

    with CheckedOps("triton") as ops:
        lr = reproduce_logits(fixture("nanotron", name), fixture("logits", f"{name}.safetensors"), backend="torch",
                              device="cpu", dtype="bf16")
    assert lr.dtype == "bf16"
    s = ops.summary()
    assert all(c["calls"] >= 1 for c in s.values()), s  # every kernel checked (NoPE: RoPE on half the layers)
    assert s["rope"]["differ"] == 0  # bit-exact


@pytest.mark.parametrize("op", ["rms_norm", "rope", "attention", "swiglu"])
def test_the_kernel_bound_fails_two_ulps_off(op):
    """Negative control: one element of one kernel output two bf16 steps off (the largest,
    where the bound is loosest) is caught: the bound allows a neighbouring value, no more."""
    from fp_bounds import CheckedOps

    def nudge(out):
        bad = out.clone()
        flat = bad.view(-1)
        i = int(flat.float().abs().argmax())
        flat.view(torch.int16)[i] += 1 if op == "rope" else 2
        return bad

    name = "qwen2_dense_tp1_pp1_bf16"
    with pytest.raises(AssertionError, match="beyond the derived bound" if op != "rope" else "must be bit-exact"):
        with CheckedOps("triton", perturb={op: nudge}):
            reproduce_logits(fixture("nanotron", name), fixture("logits", f"{name}.safetensors"), backend="torch",
                             device="cpu")


def test_qwen2_bf16_logits_need_the_plain_input_norm():
    """All-fused numerics (right for LlamaConfig) are NOT Nanotron's Qwen2 forward."""
    name = "qwen2_dense_tp1_pp1_bf16"
    lr = reproduce_logits(fixture("nanotron", name), fixture("logits", f"{name}.safetensors"), backend="torch",
                          numerics="fused")
    good = reproduce_logits(fixture("nanotron", name), fixture("logits", f"{name}.safetensors"), backend="torch")
    assert lr.max_abs > 0.04 and lr.max_abs > 2 * good.max_abs


# ---------------------------------------------------------------------------------------------
# TP=2 reshards (nanokern's writer): bias and shared expert cut per rank by their slice metadata


@pytest.mark.parametrize("name", ["qwen2_bias_tp1_pp2", "qwen2_moe_tp1_pp2"])
def test_tp2_reshard_bias_and_shared_expert_per_rank(name, exports, tmp_path):
    from nanokern.convert import convert

    dst = tmp_path / "tp2"
    convert(fixture("nanotron", name), dst, to="nanotron", tp=2, pp=1, backend="torch", progress=False)
    ck = read_checkpoint(dst)
    sharded = "attn.qkv_proj.bias" if name.startswith("qwen2_bias") else "mlp.shared_expert.gate_up_proj.weight"
    assert ck.tp == 2 and len(ck.params[f"model.decoder.0.pp_block.{sharded}"].shards) == 2
    native = NativeModel(ck, "fp32", "torch")
    a = native.layers[0].attn
    assert len(a) == 2 and all(r.bias is not None for r in a) == ck.spec.attention_bias
    if ck.spec.moe:
        assert len(native.layers[0].moe.shared) == 2 and native.layers[1].moe is None
    rep = run_parity(ck, exports(name), dtype="fp32", backend="torch")
    assert rep.passed and rep.tp == 2, rep.table()
    lr = reproduce_logits(ck, fixture("logits", f"{name}.safetensors"), backend="torch")
    assert lr.passed and lr.max_abs <= 1e-5, lr.line()


# ---------------------------------------------------------------------------------------------
# negative controls: the native forward with one semantic wrong; the real checks must fail

CONTROLS = [  # fault, fixture
    ("nope_shift", "smollm3_nope_tp1_pp1_tied"),
    ("window+1", "qwen2_swa_tp2_pp1"),
    ("window-1", "qwen2_swa_tp2_pp1"),
    ("renormalize_topk", "qwen2_moe_tp1_pp2"),
    ("no_shared_gate", "qwen2_moe_tp1_pp2"),
    ("no_bias", "qwen2_bias_tp1_pp2"),
]


@pytest.mark.parametrize("fault,name", slow_except(CONTROLS, [c for c in CONTROLS if c[0] != "window+1"]))
def test_negative_controls_fail(fault, name, exports, monkeypatch):
    monkeypatch.setattr(check, "NativeModel", functools.partial(NativeModel, fault=fault))
    rep = run_parity(fixture("nanotron", name), exports(name), dtype="fp32", backend="torch")
    assert not rep.passed, rep.table()
    # every faulted semantic is in layer 0 (NoPE shifted onto layer 0, windows on every layer,
    # MoE on layer 0, biases on every layer): the first decoder layer already fails, by far
    first = rep.first_failure()
    assert first.name == "layer 0" and first.metrics["rel_l2"] > 1e-2, rep.table()
    assert not rep.logits.passed and rep.logits.metrics["max_abs"] > 0.5
    assert any("FAULT INJECTED" in n for n in rep.notes)
    lr = check.reproduce_logits(fixture("nanotron", name), fixture("logits", f"{name}.safetensors"), backend="torch")
    assert not lr.passed and lr.max_abs > 0.5 and lr.argmax_agree < 0.9, lr.line()


def test_negative_control_window_fails_with_triton(exports, monkeypatch):
    """The Triton attention kernel's window is the one the check sees."""
    name = "qwen2_swa_tp2_pp1"
    monkeypatch.setattr(check, "NativeModel", functools.partial(NativeModel, fault="window-1"))
    rep = run_parity(fixture("nanotron", name), exports(name), dtype="fp32", backend="triton")
    assert not rep.passed and rep.first_failure().name == "layer 0"


def test_faults_must_apply():
    with pytest.raises(ValueError, match="does not apply"):
        NativeModel(fixture("nanotron", "qwen2_dense_tp1_pp1"), "fp32", "torch", fault="no_bias")
    with pytest.raises(ValueError, match="does not apply"):
        NativeModel(fixture("nanotron", "qwen2_bias_tp1_pp2"), "fp32", "torch", fault="renormalize_topk")
    with pytest.raises(ValueError, match="unknown fault"):
        NativeModel(fixture("nanotron", "qwen2_bias_tp1_pp2"), "fp32", "torch", fault="bias")


def test_layer_semantics_read_from_the_spec():
    nope = NativeModel(fixture("nanotron", "smollm3_nope_tp1_pp1_tied"), "fp32", "torch")
    assert [nope.uses_rope(i) for i in range(4)] == [True, False, True, False]
    shifted = NativeModel(nope.ck, "fp32", "torch", fault="nope_shift")
    assert [shifted.uses_rope(i) for i in range(4)] == [False, True, False, True]
    swa = NativeModel(fixture("nanotron", "qwen2_swa_tp2_pp1"), "fp32", "torch")
    assert [swa.window(i) for i in range(4)] == [6] * 4 and len(swa.layers[0].attn) == 2
    moe = NativeModel(fixture("nanotron", "qwen2_moe_tp1_pp2"), "fp32", "torch")
    assert [layer.moe is not None for layer in moe.layers] == [True, False, True, False]
    assert moe.layers[0].moe.router.dtype == torch.float32 and moe.layers[0].mlp == []


# ---------------------------------------------------------------------------------------------
# the shape check and the CLI


def test_shape_check_compares_moe_keys(exports, tmp_path):
    import shutil

    name = "qwen2_moe_tp1_pp2"
    for key, value in (("num_experts", 8), ("moe_intermediate_size", 32), ("mlp_only_layers", [1])):
        bad = tmp_path / key
        shutil.copytree(exports(name), bad)
        cfg = json.loads((bad / "config.json").read_text())
        cfg[key] = value
        (bad / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(NanokernError, match="does not match"):
            run_parity(fixture("nanotron", name), bad, dtype="fp32", backend="torch")
    # a dense HF model against the MoE checkpoint
    with pytest.raises(NanokernError, match="does not match"):
        run_parity(fixture("nanotron", name), exports("qwen2_dense_tp1_pp1"), dtype="fp32", backend="torch")


def test_cli_every_family_and_torch_dtype_names(exports, tmp_path):
    name = "qwen2_moe_tp1_pp2"
    js = tmp_path / "r.json"
    res = CliRunner().invoke(parity_cmd, [str(fixture("nanotron", name)), "--hf", str(exports(name)), "--backend", "torch",
                                          "--dtype", "float32", "--json", str(js),
                                          "--logits", str(fixture("logits", f"{name}.safetensors"))])
    assert res.exit_code == 0, res.output
    assert "Qwen2MoeForCausalLM" in res.output and "PASS" in res.output
    rep = json.loads(js.read_text())
    assert rep["passed"] and rep["parity"]["dtype"] == "fp32" and rep["nanotron_logits"]["passed"]
    bf = "qwen2_dense_tp1_pp1_bf16"
    res = CliRunner().invoke(parity_cmd, [str(fixture("nanotron", bf)), "--hf", str(exports(bf)), "--backend", "torch",
                                          "--dtype", "bfloat16", "--seq-len", "16"])
    assert res.exit_code == 0 and "bf16" in res.output, res.output
    res = CliRunner().invoke(parity_cmd, ["--help"])
    assert "every family" in res.output and "Qwen2MoeForCausalLM" in res.output


# ---------------------------------------------------------------------------------------------
# transformers' own random models of every family (tests/hf_families.py), imported at TP=2 with
# interleaved RoPE (q/k weight AND bias rows permuted per head): the native forward over those
# shards against the original HF folder, no export in between


FAMILY_FAULT = {"llama": None, "qwen2_bias": "no_bias", "qwen2_swa": "window-1", "smollm3_nope": "nope_shift",
                "qwen2_moe": "no_shared_gate"}


@pytest.mark.parametrize("family", slow_except(list(FAMILY_FAULT), ["qwen2_swa"]))  # fast loop: q/k/v bias, window
def test_hf_family_imported_interleaved_tp2(family, tmp_path, monkeypatch):
    from hf_families import build
    from nanokern.convert import convert

    hf = build(family, tmp_path / "hf", seed=3)
    convert(hf, tmp_path / "nt", to="nanotron", tp=2, pp=1, rope_interleaved="true", force=True, progress=False)
    ck = read_checkpoint(tmp_path / "nt")
    rep = run_parity(ck, hf, dtype="fp32", backend="torch", seq_len=24)
    assert rep.passed, rep.table()
    assert rep.tp == 2 and rep.rope_interleaved and len(rep.rows) == 6 + 2
    assert rep.logits.metrics["top1_counted"] >= 24
    assert ck.spec.attention_bias == family.startswith("qwen2")  # HF Qwen2 attention always has q/k/v bias
    fault = FAMILY_FAULT[family]
    if fault:  # the same shards with the family's semantic broken: the check fails
        monkeypatch.setattr(check, "NativeModel", functools.partial(NativeModel, fault=fault))
        bad = run_parity(ck, hf, dtype="fp32", backend="torch", seq_len=24)
        assert not bad.passed and bad.logits.metrics["max_abs"] > 0.1, bad.table()
