"""Nanotron -> HF export of the REAL Qwen2Config fixtures (dense, bf16, q/k/v bias, SmolLM3 NoPE,
sliding window, MoE): bit-exact tensors against an independent mapping, the family's HF config,
and Nanotron's own logits.

The reference mapping (nt_reference.hf_from_nt_qwen2 + hf_config_kwargs) is proven by the data
first: loaded into the transformers class by hand, it reproduces Nanotron's logits."""

from __future__ import annotations

import json

import pytest
import torch
from fixtures_path import QWEN2_FIXTURES, fixture
from helpers import bits, load_dir
from nt_reference import (assemble, forward_logits, hf_arch_for, hf_config_kwargs, hf_from_nt, hf_from_nt_qwen2,
                          hf_model)
from safetensors.torch import load_file

NAMES = list(QWEN2_FIXTURES)
FP32_NAMES = [n for n in NAMES if not n.endswith("_bf16")]


def model_config(name: str) -> dict:
    return json.loads((fixture("nanotron", name) / "0" / "model_config.json").read_text())


def convert(*args, **kwargs):
    """nanokern's entry point, imported on use: the oracle tests below run without the package."""
    from nanokern.convert import convert as nanokern_convert

    return nanokern_convert(*args, **kwargs)


def reference(name: str, arch: str | None = None) -> dict[str, torch.Tensor]:
    return hf_from_nt_qwen2(assemble(fixture("nanotron", name) / "0"), model_config(name), arch)


def logits_file(stem: str) -> dict[str, torch.Tensor]:
    return load_file(fixture("logits", f"{stem}.safetensors"))


def parity(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(max |diff|, argmax agreement)."""
    want = want.float()
    return (got - want).abs().max().item(), (got.argmax(-1) == want.argmax(-1)).float().mean().item()


def assert_fp32_parity(got: torch.Tensor, want: torch.Tensor):
    diff, agree = parity(got, want)
    assert diff <= 1e-4 * max(1.0, want.abs().max().item()) and agree == 1.0, (diff, agree)


def assert_logits_match_fixture(logits_of, name: str):
    """`logits_of(input_ids)` (an fp32 forward) against Nanotron's logits for fixture `name`.
    bf16 fixture: exact rule against the fp32 forward of its bf16 values (`.fp32fwd`); against
    Nanotron's bf16 forward only bf16 noise is left: a correct hand mapping measures 0.041
    there (fixtures README), so the bound is 0.05 with >= 95% argmax."""
    if name.endswith("_bf16"):
        ref = logits_file(f"{name}.fp32fwd")
        got = logits_of(ref["input_ids"])
        assert_fp32_parity(got, ref["logits"])
        bf16 = logits_file(name)
        assert torch.equal(bf16["input_ids"], ref["input_ids"])
        diff, agree = parity(got, bf16["logits"])
        assert diff <= 0.05 and agree >= 0.95, (diff, agree)
    else:
        ref = logits_file(name)
        assert_fp32_parity(logits_of(ref["input_ids"]), ref["logits"])


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """export(name, hf_arch=None) -> folder of the dtype="keep" export (converted once per module)."""
    done = {}

    def run(name, hf_arch=None):
        key = (name, hf_arch)
        if key not in done:
            out = tmp_path_factory.mktemp("export") / f"{name}-{hf_arch}"
            options = {"hf_arch": hf_arch} if hf_arch else {}
            convert(fixture("nanotron", name), out, to="hf", dtype="keep", progress=False, **options)
            done[key] = out
        return done[key]

    return run


# --- the oracle itself, against Nanotron's logits (no nanokern involved) ---------------------

@pytest.mark.parametrize("name", NAMES)
def test_reference_mapping_reproduces_nanotron_logits(name):
    mc = model_config(name)
    arch = hf_arch_for(mc)
    model = hf_model(arch, hf_config_kwargs(mc, arch), reference(name))
    assert_logits_match_fixture(lambda ids: forward_logits(model, ids), name)


def test_reference_mapping_matches_llama_export(tmp_path):
    """On a LlamaConfig fixture the Qwen2 reference mapping agrees with the LLaMA one and with
    the (already tested) LLaMA export."""
    step = fixture("nanotron", "tp1_pp1_fp32") / "0"
    mc = json.loads((step / "model_config.json").read_text())
    nt = assemble(step)
    want = hf_from_nt_qwen2(nt, mc, "LlamaForCausalLM")
    assert sorted(want) == sorted(hf_from_nt(nt, mc))
    convert(step.parent, tmp_path / "hf", to="hf", dtype="keep", progress=False)
    got = load_dir(tmp_path / "hf")
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and torch.equal(bits(got[k]), bits(w)), k


# --- the export ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_export_bit_exact(name, export):
    out = export(name)
    got, want = load_dir(out), reference(name)
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and got[k].shape == w.shape, (k, got[k].dtype, w.dtype, got[k].shape, w.shape)
        assert torch.equal(bits(got[k]), bits(w)), k
    assert (out / "config.json").is_file() and (out / "generation_config.json").is_file()
    index = out / "model.safetensors.index.json"
    if index.exists():
        assert set(json.loads(index.read_text())["weight_map"]) == set(want)
    else:
        assert [f.name for f in out.glob("*.safetensors")] == ["model.safetensors"]


def assert_config_json(cfg: dict, mc: dict, arch: str):
    """config.json carries the class and every setting hf_config_kwargs needs (padded vocab kept)."""
    assert cfg["architectures"] == [arch]
    for key, want in hf_config_kwargs(mc, arch).items():
        if key == "rope_parameters":
            assert cfg["rope_parameters"]["rope_theta"] == want["rope_theta"], cfg["rope_parameters"]
            assert cfg["rope_parameters"].get("rope_type", "default") == "default", cfg["rope_parameters"]
        else:
            assert cfg.get(key, "<absent>") == want, (key, cfg.get(key, "<absent>"), want)


@pytest.mark.parametrize("name", NAMES)
def test_export_config_json(name, export):
    mc = model_config(name)
    cfg = json.loads((export(name) / "config.json").read_text())
    arch = hf_arch_for(mc)
    assert_config_json(cfg, mc, arch)
    # the family-specific keys, spelled out (hf_config_kwargs holds them too)
    if name == "qwen2_swa_tp2_pp1":
        assert (cfg["use_sliding_window"], cfg["sliding_window"], cfg["max_window_layers"]) == (True, 6, 0)
        assert cfg["layer_types"] == ["sliding_attention"] * 4
    if name == "smollm3_nope_tp1_pp1_tied":
        assert cfg["no_rope_layers"] == [1, 0, 1, 0] and cfg["rope_parameters"]["rope_theta"] == 50000.0
        assert cfg["tie_word_embeddings"] is True
    if name == "qwen2_moe_tp1_pp2":
        assert (cfg["num_experts"], cfg["num_experts_per_tok"], cfg["norm_topk_prob"]) == (4, 2, False)
        assert cfg["mlp_only_layers"] == [1, 3] and cfg["moe_intermediate_size"] == 48
        assert cfg["shared_expert_intermediate_size"] == 80 and cfg["qkv_bias"] is False
    assert cfg["vocab_size"] == mc["vocab_size"]


@pytest.mark.parametrize("name", NAMES)
def test_export_reproduces_nanotron_logits(name, export):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(export(name), dtype=torch.float32).eval()
    assert type(model).__name__ == hf_arch_for(model_config(name))
    assert_logits_match_fixture(lambda ids: forward_logits(model, ids), name)


def test_export_dense_as_qwen2_class(export):
    """hf_arch forces Qwen2ForCausalLM on a bias-free dense checkpoint: zero q/k/v biases, same logits."""
    from transformers import AutoModelForCausalLM

    name = "qwen2_dense_tp1_pp1"
    out = export(name, "Qwen2ForCausalLM")
    got, want = load_dir(out), reference(name, "Qwen2ForCausalLM")
    assert sorted(got) == sorted(want)
    for k, w in want.items():
        assert got[k].dtype == w.dtype and torch.equal(bits(got[k]), bits(w)), k
    assert all(torch.count_nonzero(got[k]) == 0 for k in got if k.endswith("_proj.bias"))
    cfg = json.loads((out / "config.json").read_text())
    assert_config_json(cfg, model_config(name), "Qwen2ForCausalLM")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert_logits_match_fixture(lambda ids: forward_logits(model, ids), name)


def test_cli_hf_arch(tmp_path):
    """`nanokern convert SRC OUT --to hf --dtype keep --hf-arch Qwen2ForCausalLM` = the API's hf_arch."""
    from click.testing import CliRunner

    from nanokern.cli import cli

    name = "qwen2_dense_tp1_pp1"
    res = CliRunner().invoke(cli, ["convert", str(fixture("nanotron", name)), str(tmp_path / "hf"), "--to", "hf",
                                   "--dtype", "keep", "--hf-arch", "Qwen2ForCausalLM", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["Qwen2ForCausalLM"]
    got, want = load_dir(tmp_path / "hf"), reference(name, "Qwen2ForCausalLM")
    assert sorted(got) == sorted(want) and all(torch.equal(bits(got[k]), bits(want[k])) for k in want)
