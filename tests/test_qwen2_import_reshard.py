"""HF -> Nanotron import of Qwen2Config models, checked against the REAL Nanotron fixtures: exporting a
fixture and importing the export at the fixture's TP/PP gives back the fixture (weight files,
tensors, metadata values, model_config.json with its key order, config.yaml); Nanotron ->
Nanotron resharding round trips through other layouts back to the fixture."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from fixtures_path import QWEN2_FIXTURES, fixture
from nt_reference import assert_same_weights, hf_arch_for, metadata_values, model_files, read_shard, step_dir

from nanokern.convert import convert

YAML_DTYPE = {torch.float32: "float32", torch.bfloat16: "bfloat16"}


def fixture_model_config(name: str) -> dict:
    return json.loads((fixture("nanotron", name) / "0" / "model_config.json").read_text())


def export_then_import(name: str, tmp_path, dtype: str = "keep"):
    """Export the fixture to HF (keep), then import that export at the fixture's TP/PP. The export
    of a plain dense checkpoint is a LlamaForCausalLM, which imports as LlamaConfig unless asked."""
    tp, pp = QWEN2_FIXTURES[name]
    convert(fixture("nanotron", name), tmp_path / "hf", to="hf", dtype="keep", progress=False)
    options = {"nanotron_config": "qwen2"} if hf_arch_for(fixture_model_config(name)) == "LlamaForCausalLM" else {}
    convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", dtype=dtype, tp=tp, pp=pp,
            make_vocab_size_divisible_by=1, progress=False, **options)
    return tmp_path / "nt"


def assert_same_model_config(got_root, want_root):
    """Equal as dicts, and the keys in the same (dataclass) order."""
    got = json.loads((step_dir(got_root) / "model_config.json").read_text())
    want = json.loads((step_dir(want_root) / "model_config.json").read_text())
    assert got == want, {k: (got.get(k, "<absent>"), want.get(k, "<absent>"))
                         for k in set(got) | set(want) if got.get(k, "<absent>") != want.get(k, "<absent>")}
    assert list(got) == list(want)
    return got


def assert_config_yaml(root, tp: int, pp: int, model_config: dict, dtype: torch.dtype):
    cfg = yaml.safe_load((step_dir(root) / "config.yaml").read_text())
    assert (cfg["parallelism"]["tp"], cfg["parallelism"]["pp"]) == (tp, pp)
    assert cfg["model"]["model_config"] == model_config
    assert cfg["model"]["dtype"] == YAML_DTYPE[dtype]


@pytest.mark.parametrize("name", list(QWEN2_FIXTURES))
def test_import_of_export_reproduces_fixture(name, tmp_path):
    tp, pp = QWEN2_FIXTURES[name]
    out = export_then_import(name, tmp_path)
    want = fixture("nanotron", name)
    assert_same_weights(out, want)
    mc = assert_same_model_config(out, want)
    dtype = read_shard(next(iter(model_files(want).values())))[0].dtype
    assert_config_yaml(out, tp, pp, mc, dtype)
    assert (out / "latest.txt").read_text().strip() == "0"
    meta = json.loads((step_dir(out) / "checkpoint_metadata.json").read_text())
    assert meta["tp"] == tp and isinstance(meta["metas"]["data_stages"], list)


def test_import_bf16_keeps_router_float32(tmp_path):
    """dtype bf16 casts every tensor but the MoE router, which Nanotron keeps float32 (§11.6)."""
    name = "qwen2_moe_tp1_pp2"
    tp, pp = QWEN2_FIXTURES[name]
    out = export_then_import(name, tmp_path, dtype="bf16")
    got, want = model_files(out), model_files(fixture("nanotron", name))
    assert sorted(got) == sorted(want)
    routers = [rel for rel in want if "/mlp/router/" in rel]
    assert len(routers) == 2
    for rel in want:
        (tg, mg), (tw, mw) = read_shard(got[rel]), read_shard(want[rel])
        tw = tw if rel in routers else tw.to(torch.bfloat16)
        assert tg.dtype == tw.dtype and tg.shape == tw.shape, (rel, tg.dtype, tw.dtype)
        assert torch.equal(tg.view(torch.uint8), tw.view(torch.uint8)), rel
        assert metadata_values(mg) == metadata_values(mw), rel
    mc = assert_same_model_config(out, fixture("nanotron", name))
    assert_config_yaml(out, tp, pp, mc, torch.bfloat16)


@pytest.mark.parametrize("name,via", [("qwen2_moe_tp1_pp2", [(2, 3), (2, 1)]), ("qwen2_swa_tp2_pp1", [(1, 2), (1, 1)]),
                                      ("qwen2_bias_tp1_pp2", [(2, 1)]), ("smollm3_nope_tp1_pp1_tied", [(1, 3)])])
def test_reshard_round_trips_to_fixture(name, via, tmp_path):
    src = fixture("nanotron", name)
    cur = src
    for k, (tp, pp) in enumerate(via):
        convert(cur, tmp_path / f"hop{k}", to="nanotron", tp=tp, pp=pp, progress=False)
        cur = tmp_path / f"hop{k}"
    tp, pp = QWEN2_FIXTURES[name]
    convert(cur, tmp_path / "back", to="nanotron", tp=tp, pp=pp, progress=False)
    assert_same_weights(tmp_path / "back", src)
    assert_same_model_config(tmp_path / "back", src)


def test_cli_nanotron_config(tmp_path):
    """`--nanotron-config qwen2|llama` chooses the Nanotron class for a LlamaForCausalLM source."""
    from click.testing import CliRunner

    from nanokern.cli import cli

    name = "qwen2_dense_tp1_pp1"
    convert(fixture("nanotron", name), tmp_path / "hf", to="hf", dtype="keep", progress=False)
    for choice, marker in (("qwen2", "is_qwen2_config"), ("llama", "is_llama_config")):
        out = tmp_path / choice
        res = CliRunner().invoke(cli, ["convert", str(tmp_path / "hf"), str(out), "--to", "nanotron", "--tp", "1",
                                       "--pp", "1", "--nanotron-config", choice, "-q"])
        assert res.exit_code == 0, res.output
        mc = json.loads((step_dir(out) / "model_config.json").read_text())
        assert mc.get(marker) is True and len([k for k in mc if k.startswith("is_")]) == 1, mc
    assert_same_model_config(tmp_path / "qwen2", fixture("nanotron", name))
    assert_same_weights(tmp_path / "qwen2", fixture("nanotron", name))
