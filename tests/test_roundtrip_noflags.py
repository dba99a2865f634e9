"""NT -> HF -> NT with no flags is the identity: an export records its Nanotron source in its
manifest (config class, RoPE row order, the model_config.json fields config.json has no place
for) and an import of the export restores them. Checked on every real fixture: model_config.json
(parsed) equal, every tensor bit-equal (nanokern.verify --against, and file by file: dtype, shape,
slice metadata). --nanotron-config and --rope-interleaved still override; a HF folder from
elsewhere (no manifest) imports as before."""

from __future__ import annotations

import json
import shutil

import pytest
from fixtures_path import NANOTRON_FIXTURES, QWEN2_FIXTURES, fixture
from nt_reference import assert_same_weights, step_dir

from nanokern.convert import convert
from nanokern.execute.manifest import MANIFEST
from nanokern.formats import hf
from nanokern.verify import verify

LAYOUTS = {**QWEN2_FIXTURES, "tp1_pp1": (1, 1), "tp1_pp1_fp32": (1, 1), "tp2_pp2": (2, 2), "tp2_pp1_tied": (2, 1)}
assert set(LAYOUTS) >= set(NANOTRON_FIXTURES)


def model_config(root) -> dict:
    return json.loads((step_dir(root) / "model_config.json").read_text())


def round_trip(src, tmp_path, tp, pp, **import_flags):
    """NT -> HF (--dtype keep) -> NT at TP x PP (the source's): the re-imported checkpoint's folder."""
    convert(src, tmp_path / "hf", to="hf", dtype="keep", progress=False)
    convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", tp=tp, pp=pp, progress=False, **import_flags)
    return tmp_path / "nt"


def assert_identity(got, src):
    assert model_config(got) == model_config(src)
    rep = verify(got, against=src)
    assert rep.ok and not rep.problems, rep.problems
    assert not [n for n in rep.notes if "dtypes" in n or "rows" in n], rep.notes  # no cast, no vocab trim
    assert_same_weights(got, src)


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_nt_hf_nt_is_identity(name, tmp_path):
    src = fixture("nanotron", name)
    assert_identity(round_trip(src, tmp_path, *LAYOUTS[name]), src)


def test_training_fields_restored(tmp_path):
    """Non-default values of the fields only Nanotron has survive the round trip (the fixtures
    hold the defaults, which an import would write anyway), moe_config's included."""
    src = tmp_path / "src"
    shutil.copytree(fixture("nanotron", "qwen2_moe_tp1_pp2"), src)
    cfg_file = step_dir(src) / "model_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.update({"z_loss_enabled": True, "z_loss_coefficient": 0.001, "_fused_rotary_emb": False, "_fused_rms_norm": False,
                "_use_qkv_packed": False, "_use_doc_masking": True, "log_attn_probs": False, "_attn_implementation": "sdpa",
                "ring_attn_heads_k_stride": 2, "flex_attention_mask": "document"})
    cfg["moe_config"]["token_dispatcher_type"] = "allgather"
    cfg_file.write_text(json.dumps(cfg))
    (tmp_path / "rt").mkdir()
    assert_identity(round_trip(src, tmp_path / "rt", *LAYOUTS["qwen2_moe_tp1_pp2"]), src)
    recorded = json.loads((tmp_path / "rt" / "hf" / MANIFEST).read_text())["nanotron_source"]
    assert recorded["config_class"] == "qwen2" and recorded["model_config"]["z_loss_coefficient"] == 0.001


def test_interleaved_rope_restored(tmp_path):
    """A checkpoint trained with interleaved RoPE: the export permutes q/k rows to HF's order, the
    import permutes them back and writes rope_interleaved: true."""
    convert(fixture("nanotron", "tp2_pp2"), tmp_path / "src", to="nanotron", tp=2, pp=2, rope_interleaved=True,
            progress=False)
    assert model_config(tmp_path / "src")["rope_interleaved"] is True
    (tmp_path / "rt").mkdir()
    assert_identity(round_trip(tmp_path / "src", tmp_path / "rt", 2, 2), tmp_path / "src")


def test_flags_still_override(tmp_path):
    (tmp_path / "a").mkdir()
    got = round_trip(fixture("nanotron", "qwen2_dense_tp1_pp1"), tmp_path / "a", 1, 1, nanotron_config="llama",
                     rope_interleaved="true")
    cfg = model_config(got)
    assert cfg.get("is_llama_config") and "is_qwen2_config" not in cfg and cfg["rope_interleaved"] is True


def test_hf_folder_from_elsewhere_unchanged(tmp_path):
    """Without the manifest (a HF folder nanokern did not write) a dense Qwen2Config export imports
    as a LlamaForCausalLM folder always did: LlamaConfig, Nanotron's defaults for the rest."""
    convert(fixture("nanotron", "qwen2_dense_tp1_pp1"), tmp_path / "hf", to="hf", dtype="keep", progress=False)
    (tmp_path / "hf" / MANIFEST).unlink()
    convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", progress=False)
    cfg = model_config(tmp_path / "nt")
    assert cfg.get("is_llama_config") and "is_qwen2_config" not in cfg


def test_manifest_names_agree():
    assert hf.EXPORT_MANIFEST == MANIFEST
