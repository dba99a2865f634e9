"""Feature combinations no fixture holds: a MoE checkpoint without a shared expert (HF's
Qwen2Moe always has one: zeros on export, dropped again on import), and NoPE layers together with
a sliding window (SmolLM3 with explicit layer_types: the window on the RoPE layers only, as
Nanotron does). Each is checked by the parity forward, which computes Nanotron's semantics from
the shard files, against transformers on the export."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import transformers
from hf_families import COMMON, randomize
from helpers import bits
from nt_reference import assemble, assert_same_weights, step_dir
from safetensors.torch import load_file

from nanokern.convert import convert
from nanokern.parity import run_parity


def _without_shared_expert(src, dst):
    shutil.copytree(src, dst)
    step = step_dir(dst)
    for d in step.glob("model/model/decoder/*/pp_block/mlp/shared_expert*"):
        shutil.rmtree(d)
    f = step / "model_config.json"
    mc = json.loads(f.read_text())
    mc["moe_config"]["enable_shared_expert"] = False
    f.write_text(json.dumps(mc))
    return dst


def test_moe_without_shared_expert(tmp_path):
    from hf_families import build

    build("qwen2_moe", tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "nt_full", to="nanotron", tp=2, pp=2, force=True, progress=False)
    nt = _without_shared_expert(tmp_path / "nt_full", tmp_path / "nt")
    convert(nt, tmp_path / "export", to="hf", dtype="keep", force=True, progress=False)
    out = load_file(str(tmp_path / "export" / "model.safetensors"))
    shared = [n for n in out if ".shared_expert" in n]
    assert shared and all(not bits(out[n]).any() for n in shared)
    rep = run_parity(nt, tmp_path / "export", dtype="fp32", backend="torch")
    assert rep.passed, rep.table()
    convert(tmp_path / "export", tmp_path / "back", to="nanotron", tp=2, pp=2, force=True, progress=False)
    assert_same_weights(tmp_path / "back", nt)
    assert json.loads((step_dir(tmp_path / "back") / "model_config.json").read_text())["moe_config"]["enable_shared_expert"] is False


def test_nope_layers_with_a_sliding_window(tmp_path):
    n = COMMON["num_hidden_layers"]
    rope = [int((i + 1) % 3 != 0) for i in range(n)]
    cfg = transformers.SmolLM3Config(**{**COMMON, "no_rope_layers": rope, "use_sliding_window": True, "sliding_window": 4,
                                        "layer_types": ["sliding_attention" if r else "full_attention" for r in rope],
                                        "rope_parameters": {"rope_type": "default", "rope_theta": 50000.0},
                                        "tie_word_embeddings": False})
    model = transformers.SmolLM3ForCausalLM(cfg)
    randomize(model, 3)
    model.save_pretrained(tmp_path / "hf")
    convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", tp=2, pp=3, rope_interleaved="true", force=True, progress=False)
    mc = json.loads((step_dir(tmp_path / "nt") / "model_config.json").read_text())
    assert (mc["no_rope_layer"], mc["sliding_window_size"], mc["is_qwen2_config"]) == (3, 4, True)
    assert set(assemble(step_dir(tmp_path / "nt")))  # readable by the tests' own reader
    rep = run_parity(tmp_path / "nt", tmp_path / "hf", dtype="fp32", backend="torch", seq_len=16)
    assert rep.passed, rep.table()
    convert(tmp_path / "nt", tmp_path / "export", to="hf", dtype="keep", force=True, progress=False)
    got = json.loads((tmp_path / "export" / "config.json").read_text())
    assert got["architectures"] == ["SmolLM3ForCausalLM"] and got["layer_types"] == cfg.layer_types
    back = load_file(str(tmp_path / "export" / "model.safetensors"))
    orig = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(back) == set(orig) and all(torch.equal(back[k], orig[k]) for k in orig)


def test_moe_export_cast_to_bf16_rounds_like_torch(tmp_path, monkeypatch):
    """Expert matrices are transposed on the way (in tiles of source rows: 7 here, so that the
    fixture's 64- and 48-wide matrices take several uneven tiles); cast to bf16 they are exactly
    the tests' own mapping's tensors .to(bfloat16), but for the router: Nanotron keeps it in
    float32 whatever the model dtype, and so does the export (transformers casts it on load)."""
    from fixtures_path import fixture
    from nt_reference import hf_from_nt_qwen2

    import nanokern.ops.host

    monkeypatch.setattr(nanokern.ops.host, "TRANSPOSE_TILE", 7)
    src = fixture("nanotron", "qwen2_moe_tp1_pp2")
    mc = json.loads((src / "0" / "model_config.json").read_text())
    want = hf_from_nt_qwen2(assemble(src / "0"), mc)
    convert(src, tmp_path / "hf", to="hf", dtype="bfloat16", force=True, progress=False)
    got = load_file(str(tmp_path / "hf" / "model.safetensors"))
    assert set(got) == set(want)
    routers = [n for n in want if n.endswith("mlp.gate.weight")]
    assert routers and all(want[n].dtype == torch.float32 for n in routers)
    for name, t in want.items():
        dt = torch.float32 if name in routers else torch.bfloat16
        assert got[name].dtype == dt and torch.equal(bits(got[name]), bits(t.to(dt))), name


def test_moe_import_of_fused_experts(tmp_path):
    """A Qwen2-MoE folder holding its experts fused, as transformers does in memory
    ([E, 2I, H] gate rows first, [E, H, I]), imports to the same Nanotron files as the
    per-expert tensors save_pretrained writes."""
    from hf_families import build
    from safetensors.torch import save_file

    hf = build("qwen2_moe", tmp_path / "hf")
    sd = load_file(str(hf / "model.safetensors"))
    fused = {k: v for k, v in sd.items() if ".mlp.experts." not in k}
    layers = sorted({int(k.split(".")[2]) for k in sd if ".mlp.experts." in k})
    for i in layers:
        p = f"model.layers.{i}.mlp.experts."
        E = len({k for k in sd if k.startswith(p) and k.endswith("down_proj.weight")})
        fused[p + "gate_up_proj"] = torch.stack([torch.cat([sd[f"{p}{e}.gate_proj.weight"], sd[f"{p}{e}.up_proj.weight"]]) for e in range(E)])
        fused[p + "down_proj"] = torch.stack([sd[f"{p}{e}.down_proj.weight"] for e in range(E)])
    shutil.copytree(hf, tmp_path / "hf_fused")
    save_file(fused, str(tmp_path / "hf_fused" / "model.safetensors"), metadata={"format": "pt"})
    for name in ("hf", "hf_fused"):
        convert(tmp_path / name, tmp_path / f"nt_{name}", to="nanotron", tp=2, pp=2, force=True, progress=False)
    assert_same_weights(tmp_path / "nt_hf_fused", tmp_path / "nt_hf")


def test_reshard_into_interleaved_rope_permutes_the_rows(tmp_path):
    """A reshard with --rope-interleaved true reads the source by its own config (here an explicit
    false) and writes interleaved q/k rows: the result still reproduces Nanotron's logits. (Used
    for both sides, the flag would leave the rows as they were under a config that says true.)"""
    from fixtures_path import fixture

    from nanokern.parity import reproduce_logits

    src = fixture("nanotron", "qwen2_bias_tp1_pp2")
    convert(src, tmp_path / "nt", to="nanotron", tp=1, pp=1, rope_interleaved="true", force=True, progress=False)
    assert json.loads((step_dir(tmp_path / "nt") / "model_config.json").read_text())["rope_interleaved"] is True
    rep = reproduce_logits(tmp_path / "nt", fixture("logits", "qwen2_bias_tp1_pp2.safetensors"), backend="torch")
    assert rep.passed, rep.line()


@pytest.mark.parametrize("family,edit", [
    ("qwen2_moe", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 6}),  # HF: even layers slide
    ("qwen2_moe", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}),  # HF: none slides
    ("qwen2_swa", {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 0}),  # HF: all slide
    ("smollm3_nope", {"use_sliding_window": True, "sliding_window": 8}),  # HF: the NoPE layers slide
])
def test_window_of_a_config_without_layer_types_follows_transformers(tmp_path, family, edit):
    """Without layer_types each class has its own default; the import takes the window exactly
    where transformers' config puts it, or refuses a layout Nanotron cannot hold (it slides the
    RoPE layers, all of them)."""
    from hf_families import build

    from nanokern.errors import NanokernError

    hf = build(family, tmp_path / "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg = {**{k: v for k, v in cfg.items() if k != "layer_types"}, **edit}
    (hf / "config.json").write_text(json.dumps(cfg))
    types = transformers.AutoConfig.from_pretrained(hf).layer_types
    rope = cfg.get("no_rope_layers") or [1] * cfg["num_hidden_layers"]
    slides = [t == "sliding_attention" for t in types]
    if slides == [bool(r) for r in rope] or not any(slides):
        convert(hf, tmp_path / "nt", to="nanotron", force=True, progress=False)
        mc = json.loads((step_dir(tmp_path / "nt") / "model_config.json").read_text())
        assert mc["sliding_window_size"] == (8 if any(slides) else None), types
    else:
        with pytest.raises(NanokernError, match="layer_types"):
            convert(hf, tmp_path / "nt", to="nanotron", force=True, progress=False)
