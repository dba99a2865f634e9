"""Nanotron -> HF export of the REAL fixtures: bit-exact tensors and Nanotron's own logits."""

from __future__ import annotations

import importlib.metadata
import json

import pytest
import torch
from fixtures_path import NANOTRON_FIXTURES, fixture
from helpers import bits, load_dir, tree_bytes
from nt_reference import assemble, hf_from_nt
from safetensors.torch import load_file

from nanokern.convert import convert

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def expected_hf(step, cfg, vocab=None):
    """HF tensors from independently re-assembled shards (no RoPE permutation: fixtures are half-split)."""
    return hf_from_nt(assemble(step), cfg, vocab)


@pytest.mark.parametrize("name", NANOTRON_FIXTURES)
@pytest.mark.parametrize("dtype", ["keep", "bf16", "fp16", "fp32"])
def test_export_bit_exact(name, dtype, tmp_path):
    src = fixture("nanotron", name)
    step = src / "0"
    cfg = json.loads((step / "model_config.json").read_text())
    convert(src, tmp_path / "hf", dtype=dtype, backend="torch", progress=False, max_shard_size="60KB", vocab_size=250)
    got = load_dir(tmp_path / "hf")
    want = expected_hf(step, cfg, vocab=250)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        w = w if dtype == "keep" else w.to(DTYPES[dtype])
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, k
        assert torch.equal(bits(got[k]), bits(w)), k
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(want)
    hf_cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert hf_cfg["vocab_size"] == 250 and hf_cfg["tie_word_embeddings"] == cfg["tie_word_embeddings"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NANOTRON_FIXTURES)
def test_export_reproduces_nanotron_logits(name, tmp_path):
    from transformers import AutoModelForCausalLM

    src = fixture("nanotron", name)
    ref = load_file(fixture("logits", f"{name}.safetensors"))
    convert(src, tmp_path / "hf", dtype="keep", backend="torch", progress=False)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32)
    with torch.no_grad():
        logits = model(ref["input_ids"]).logits
    want = ref["logits"].float()
    diff = (logits - want).abs().max().item()
    agree = (logits.argmax(-1) == want.argmax(-1)).float().mean().item()
    if "fp32" in name:
        assert diff <= 1e-4 and agree == 1.0, (diff, agree)
    else:
        assert diff <= 0.03 and agree >= 0.95, (diff, agree)


def test_export_matches_nanotron_script_reference(tmp_path):
    """Same tensors as Nanotron's own convert_nanotron_to_hf.py (padded vocab, no permutation
    needed for these half-split checkpoints), and a config transformers reads the same way."""
    ref_dir = fixture("hf-reference", "tp1_pp1-by-nanotron-script")
    convert(fixture("nanotron", "tp2_pp2"), tmp_path / "hf", backend="torch", progress=False)
    got, want = load_file(tmp_path / "hf" / "model.safetensors"), load_file(ref_dir / "model.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        assert torch.equal(bits(got[k]), bits(want[k])), k
    ours = json.loads((tmp_path / "hf" / "config.json").read_text())
    theirs = json.loads((ref_dir / "config.json").read_text())
    # the version of the transformers that wrote each (read here the slow, sure way)
    assert ours.pop("transformers_version") == importlib.metadata.version("transformers")
    theirs.pop("transformers_version")
    # ours also spells the RoPE base and dtype as transformers 4.x reads them (test_hf_compat.py)
    assert ours.pop("rope_theta") == theirs["rope_parameters"]["rope_theta"] and ours.pop("rope_scaling") is None
    assert ours.pop("torch_dtype") == theirs["dtype"]
    assert ours == theirs


@pytest.mark.slow
@pytest.mark.parametrize("name", NANOTRON_FIXTURES)
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_backends_give_identical_bytes(name, dtype, tmp_path):
    """torch, cpu (C++) and triton (interpreter here) exports are byte-identical, and bit-exact
    to tensor.to(dtype) of the independently re-assembled weights."""
    src = fixture("nanotron", name)
    step = src / "0"
    cfg = json.loads((step / "model_config.json").read_text())
    trees = {}
    for backend in ("torch", "cpu", "triton"):
        _, rep = convert(src, tmp_path / backend, dtype=dtype, backend=backend, progress=False, max_shard_size="100KB")
        assert rep.backend == backend
        trees[backend] = tree_bytes(tmp_path / backend)
    assert trees["cpu"] == trees["torch"] and trees["triton"] == trees["torch"]
    got = load_dir(tmp_path / "cpu")
    for k, w in expected_hf(step, cfg).items():
        assert torch.equal(bits(got[k]), bits(w.to(DTYPES[dtype]))), k
