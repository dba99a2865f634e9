"""Exports read as the same model by transformers 4.57.1 (what many serving and evaluation stacks
pin) and by the installed transformers 5: tiny models of every family with non-default RoPE bases,
written by transformers 5, imported to TP2 PP2, exported (--dtype keep and bf16), then loaded by a
second interpreter with transformers 4.57.1; its logits are compared with transformers 5's.

transformers 4.x reads the top-level `rope_theta` / `rope_scaling` / `torch_dtype`, 5.x reads
`rope_parameters` / `dtype`; a 4.x that finds no `rope_theta` silently uses the class default
(LLaMA and Qwen2 1e4, SmolLM3 2e6): every position's rotation changes and logits move by O(1).

The second interpreter is .venv's python with a folder of the packages 4.57.1 needs at other
versions than .venv's first on PYTHONPATH (torch, numpy, safetensors... are .venv's own). The
folder is made once, from PyPI, into .hf-compat/ at the repo root (ignored by git), under a file
lock so parallel runs make it once. The second interpreter is the slow part (marked slow); the
fast loop checks the two spellings on one export."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from pip_env import pinned_env
from fixtures_path import FIXTURES, REPO, fixture
from hf_compat_child import logits_and_warnings
from hf_families import COMMON, FAMILIES, build_model
from safetensors.torch import load_file, save_file

from nanokern.convert import convert

# transformers 4.57.1 and what it needs at other versions than .venv's (tokenizers <=0.23.0,
# huggingface_hub <1.0 and its requests stack); everything else is .venv's own.
PINS = ["transformers==4.57.1", "tokenizers==0.22.1", "huggingface_hub==0.36.0", "requests==2.34.2",
        "urllib3==2.8.0", "certifi==2026.10.19.post1", "charset-normalizer==3.5.3"]
ENV_DIR = REPO / ".hf-compat" / "transformers-4.57.1"

# Tiny models of every family (hf_families), with non-default RoPE bases (the class defaults:
# LLaMA, Qwen2, Qwen2-MoE 1e4; SmolLM3 2e6), plus a Qwen2-MoE with a window and a LLaMA with
# llama3 RoPE scaling (the one non-null rope_scaling): name -> (class, config class, settings, theta).
def _rope(theta: float, **scaling) -> dict:
    return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, **scaling}}


THETA = {"llama": 5e5, "qwen2_bias": 1e6, "qwen2_swa": 1e6, "smollm3_nope": 5e4, "qwen2_moe": 1e6}
SOURCES = {f: (*FAMILIES[f][:2], {**FAMILIES[f][2], **_rope(t)}, t) for f, t in THETA.items()}
SOURCES["qwen2_moe_swa"] = (*FAMILIES["qwen2_moe"][:2], {
    **FAMILIES["qwen2_moe"][2], "use_sliding_window": True, "sliding_window": 5, "max_window_layers": 0,
    "layer_types": ["sliding_attention"] * COMMON["num_hidden_layers"], **_rope(1e6)}, 1e6)
SOURCES["llama_rope_llama3"] = (*FAMILIES["llama"][:2], {**FAMILIES["llama"][2], **_rope(
    5e5, rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)}, 5e5)
# real Nanotron checkpoints: name -> (rope_theta, dtypes); the MoE one has no q/k/v bias (qkv_bias: false)
NT_FIXTURES = {"smollm3_nope_tp1_pp1_tied": (5e4, ("keep", "bf16")), "qwen2_moe_tp1_pp2": (1e4, ("keep",))}
SEQ = 24  # longer than qwen2_swa's window (5)

# The bound. Both versions run the same float32 math on the same weights (for bf16 exports both
# load the SAME bf16 file into float32), so they differ only where an operation sums in another
# order (matmul blocking, SDPA vs. eager kernels, the MoE expert loop). A length-K dot product
# summed in any order is within K*u*sum|a_i*b_i| of the exact one (u = 2**-24, fp32 unit
# roundoff); relative to the output scale that is at most K*u per matmul stage. A decoder layer
# has 6 such stages (q/k/v, q.k, p.v, o, gate/up, down) and the LM head one more; the residual
# stream carries each layer's error to the logits, so errors add over the stages (unit gain:
# RMSNorm and softmax are contractions at this scale). K is the longest reduction (64 here:
# hidden, intermediate and sequence are all <= 64). Bound: STAGES * K * u * max|logits|, with a
# factor 4 for the non-linear stages (silu, softmax, RMSNorm's rsqrt, each a few ulps).
# A wrong RoPE base instead changes q.k at every position after the first: on these models it
# moves the logits by 0.2-0.7 (a tenth to a fifth of max|logits|), hundreds of times the bound.
U = 2.0 ** -24
K = 64


def bound(ref: torch.Tensor, layers: int) -> float:
    stages = 6 * layers + 1
    return 4 * stages * K * U * ref.abs().max().item()


def hf457_env() -> Path:
    """The PYTHONPATH folder of the transformers 4.57.1 interpreter (made once, under a lock)."""
    return pinned_env(ENV_DIR, PINS, "transformers 4.57.1", 900)


def build(name: str, folder: Path, seed: int) -> Path:
    """The tiny model SOURCES[name], random float32, saved by transformers 5."""
    cls, cfg_cls, settings, _ = SOURCES[name]
    return build_model(cls, cfg_cls, settings, folder, seed)


def case_names() -> list[str]:
    return [f"{f}-{d}" for f in SOURCES for d in ("keep", "bf16")] + [f"{f}-{d}" for f, (_, ds) in NT_FIXTURES.items() for d in ds]


def theta_of(case: str) -> float:
    name = case.rsplit("-", 1)[0]
    return SOURCES[name][3] if name in SOURCES else NT_FIXTURES[name][0]


FAST_CASE = "qwen2_swa-bf16"  # the fast loop's one export: non-default base, a window, the bf16 spelling


def _export(root: Path, names) -> dict:
    """{case: (folder, reference folder, ids, layers)} for the case names: transformers 5's
    models imported to TP2 PP2 and exported; the real fixtures exported. Reference for --dtype
    keep: the source; for bf16: the same bf16 export (both run in float32)."""
    g = torch.Generator().manual_seed(0)
    made = {}
    for seed, family in enumerate(SOURCES):
        wanted = [d for d in ("keep", "bf16") if f"{family}-{d}" in names]
        if not wanted:
            continue
        src = build(family, root / family / "src", seed)
        nt = root / family / "nt"
        convert(src, nt, to="nanotron", tp=2, pp=2, dtype="keep", progress=False)
        for dtype in wanted:
            folder = root / family / dtype
            convert(nt, folder, to="hf", dtype=dtype, progress=False)
            ids = torch.randint(3, COMMON["vocab_size"], (2, SEQ), generator=torch.Generator().manual_seed(seed))
            made[f"{family}-{dtype}"] = (folder, src if dtype == "keep" else folder, ids, COMMON["num_hidden_layers"])
    for fx, (_, dtypes) in NT_FIXTURES.items():  # reference: transformers 5 on the same export
        for dtype in dtypes if (FIXTURES / "nanotron" / fx).is_dir() else ():
            if f"{fx}-{dtype}" not in names:
                continue
            folder = root / fx / dtype
            convert(FIXTURES / "nanotron" / fx, folder, to="hf", dtype=dtype, progress=False)
            made[f"{fx}-{dtype}"] = (folder, folder, torch.randint(3, 260, (2, SEQ), generator=g), 4)
    return made


def _compare(root: Path, made: dict) -> dict:
    """{case: (transformers 5 logits, transformers 4.57 logits, layers, 4.57's warnings and config, folder)}."""
    env = hf457_env()
    save_file({k: v[2] for k, v in made.items()}, root / "ids.safetensors")
    job = {"cases": {k: str(v[0]) for k, v in made.items()}, "ids": str(root / "ids.safetensors"), "out": str(root / "out")}
    (root / "job.json").write_text(json.dumps(job))
    child = Path(__file__).with_name("hf_compat_child.py")
    pythonpath = os.pathsep.join([str(env), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    r = subprocess.run([sys.executable, str(child), str(root / "job.json")], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": pythonpath})
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads((root / "out.json").read_text())
    assert info["version"] == "4.57.1", info["version"]
    old = load_file(root / "out.safetensors")
    out = {}
    for name, (folder, ref, ids, layers) in made.items():
        new, warned, _ = logits_and_warnings(ref, ids)
        assert not warned, (name, "transformers 5 warned", warned)
        out[name] = (new, old[name], layers, info["cases"][name], folder)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("hf_compat"), set(case_names()))


@pytest.fixture(scope="module")
def compared(exported, tmp_path_factory):
    """Every case, transformers 4.57.1 against 5 (one child interpreter for all)."""
    return _compare(tmp_path_factory.mktemp("hf_compat_run"), exported)


@pytest.mark.slow
def test_both_spellings_agree(exported):
    """Every export spells the RoPE settings and the dtype both ways, and the two agree: what
    4.45-4.56 read (rope_theta, rope_scaling, torch_dtype) is what 5.x reads (rope_parameters, dtype)."""
    for case, (folder, *_) in exported.items():
        _both_spellings(case, folder)


def test_both_spellings_agree_on_one_export(tmp_path):
    """The fast loop's case of the above (and of the slow transformers 4.57 comparison, which
    starts a second interpreter): one model, exported, its config read both ways."""
    (folder, *_), = _export(tmp_path, {FAST_CASE}).values()
    _both_spellings(FAST_CASE, folder)


def _both_spellings(case: str, folder: Path) -> None:
    """RoPE base, scaling and dtype spelled both ways (4.x and 5.x), agreeing."""
    cfg = json.loads((folder / "config.json").read_text())
    rp = dict(cfg["rope_parameters"])
    assert cfg["rope_theta"] == rp.pop("rope_theta") == theta_of(case), case
    assert cfg["rope_scaling"] == (None if rp["rope_type"] == "default" else rp), case
    assert cfg["torch_dtype"] == cfg["dtype"] == ("bfloat16" if case.endswith("bf16") else "float32"), case


@pytest.mark.slow
@pytest.mark.parametrize("case", case_names())
def test_transformers_457_reads_the_same_model(case, compared):
    if case.rsplit("-", 1)[0] in NT_FIXTURES:
        fixture("nanotron", case.rsplit("-", 1)[0])  # absent: skip outside CI, fail under CI=true
    new, old, layers, info, _ = compared[case]
    assert not info["warnings"], (case, "transformers 4.57.1 warned", info["warnings"])
    theta = theta_of(case)
    diff = (new - old).abs().max().item()
    agree = (new.argmax(-1) == old.argmax(-1)).float().mean().item()
    limit = bound(new, layers)
    print(f"{case}: transformers 4.57.1 vs {transformers.__version__}: max|diff| {diff:.3g} (bound {limit:.3g}), "
          f"argmax agreement {agree:.0%}, 4.57 rope_theta {info['config'].get('rope_theta')}")
    assert diff <= limit, (case, f"max|diff| {diff:.3g} > {limit:.3g}, argmax agreement {agree:.0%}",
                           f"rope_theta read by 4.57: {info['config'].get('rope_theta')}, written: {theta}")
    assert info["config"]["rope_theta"] == theta, (case, info["config"])


@pytest.mark.parametrize("family,theta", [("llama", 1e4), ("qwen2_swa", 1e4), ("qwen2_moe", 1e4), ("smollm3_nope", 2e6)])
def test_a_config_without_rope_base_reads_the_class_default(family, theta, tmp_path):
    """No rope_theta anywhere: transformers 4.x and 5.x both take the class's own base (SmolLM3's
    is 2e6, not LLaMA's 1e4), and so does the import."""
    from nanokern.formats.hf import spec_from_hf_config

    cls, cfg_cls = FAMILIES[family][:2]
    cfg = getattr(transformers, cfg_cls)(**{**COMMON, **FAMILIES[family][2]}).to_dict()
    for key in ("rope_theta", "rope_parameters", "rope_scaling"):
        cfg.pop(key, None)
    cfg["architectures"] = [cls]
    assert getattr(transformers, cfg_cls).from_dict(cfg).rope_parameters["rope_theta"] == theta
    assert spec_from_hf_config(cfg, tmp_path / "config.json")[1].rope_theta == theta
