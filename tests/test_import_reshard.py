"""HF -> Nanotron import and Nanotron -> Nanotron resharding, checked against real Nanotron output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fixtures_path import fixture
from helpers import bits
from nt_reference import random_hf
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from nanokern.convert import convert
from nanokern.errors import NanokernError


def model_files(root: Path) -> dict[str, Path]:
    step = root / (root / "latest.txt").read_text().strip()
    return {str(p.relative_to(step)): p for p in sorted((step / "model").rglob("*.safetensors"))}


def read(path: Path):
    with safe_open(str(path), "pt") as f:
        return f.get_tensor("data"), f.metadata() or {}


def canonical_md(md: dict) -> dict:
    if not md:
        return {}
    shape = md["unsharded_shape"].replace("np.int64(", "").replace(")", "").strip("(").split(",")
    return {"keys": sorted(md), "version": md["version"], "shape": [int(s) for s in shape if s.strip()],
            "pairs": set(md["local_global_slices_pairs"].split(";"))}


def assert_same_checkpoint(got: Path, want: Path):
    g, w = model_files(got), model_files(want)
    assert sorted(g) == sorted(w)
    for rel in w:
        (tg, mg), (tw, mw) = read(g[rel]), read(w[rel])
        assert tg.dtype == tw.dtype and tg.shape == tw.shape, rel
        assert torch.equal(tg.view(torch.uint8), tw.view(torch.uint8)), rel
        assert canonical_md(mg) == canonical_md(mw), rel
    step_g = got / (got / "latest.txt").read_text().strip()
    step_w = want / (want / "latest.txt").read_text().strip()
    assert (step_g / "model_config.json").read_text() == (step_w / "model_config.json").read_text()


@pytest.mark.parametrize("src,tp,pp,want", [("tp2_pp2", 1, 1, "tp1_pp1"), ("tp1_pp1", 2, 2, "tp2_pp2")])
def test_reshard_reproduces_real_nanotron(src, tp, pp, want, tmp_path):
    convert(fixture("nanotron", src), tmp_path / "out", to="nanotron", tp=tp, pp=pp, backend="torch", progress=False)
    assert_same_checkpoint(tmp_path / "out", fixture("nanotron", want))


@pytest.mark.parametrize("name,via", [("tp1_pp1_fp32", [(2, 3), (1, 2)]), ("tp2_pp1_tied", [(1, 2), (2, 3)])])
def test_reshard_round_trips(name, via, tmp_path):
    src = fixture("nanotron", name)
    cur = src
    for k, (tp, pp) in enumerate(via):
        convert(cur, tmp_path / f"hop{k}", to="nanotron", tp=tp, pp=pp, backend="torch", progress=False)
        cur = tmp_path / f"hop{k}"
    ck = json.loads((src / "0" / "checkpoint_metadata.json").read_text())
    convert(cur, tmp_path / "back", to="nanotron", tp=ck["tp"], pp=1, backend="torch", progress=False)
    assert_same_checkpoint(tmp_path / "back", src)


def test_import_nanotron_script_hf_reproduces_tp2_pp2(tmp_path):
    convert(fixture("hf-reference", "tp1_pp1-by-nanotron-script"), tmp_path / "nt", to="nanotron", tp=2, pp=2,
            backend="torch", progress=False)
    assert_same_checkpoint(tmp_path / "nt", fixture("nanotron", "tp2_pp2"))
    yaml_text = (tmp_path / "nt" / "0" / "config.yaml").read_text()
    assert "load_optimizer: false" in yaml_text and "tp: 2" in yaml_text


def write_hf(folder: Path, c: dict, w: dict):
    folder.mkdir(parents=True)
    save_file(w, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": c["hidden_size"],
           "intermediate_size": c["intermediate_size"], "num_hidden_layers": c["num_hidden_layers"],
           "num_attention_heads": c["num_attention_heads"], "num_key_value_heads": c["num_key_value_heads"],
           "vocab_size": c["vocab_size"], "tie_word_embeddings": c["tie_word_embeddings"], "rms_norm_eps": 1e-5,
           "rope_theta": 10000.0, "bos_token_id": 1, "eos_token_id": 2}
    (folder / "config.json").write_text(json.dumps(cfg))


CFG = dict(num_hidden_layers=3, hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=4,
           vocab_size=60, tie_word_embeddings=False)


@pytest.mark.parametrize("tp", [1, 2, 4])
@pytest.mark.parametrize("pp", [1, 2, 3])
@pytest.mark.parametrize("interleaved", ["false", "true"])
def test_hf_nanotron_hf_bit_exact(tp, pp, interleaved, tmp_path):
    w = random_hf(CFG, dtype=torch.bfloat16, seed=tp * 10 + pp)
    write_hf(tmp_path / "hf", CFG, w)
    convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", tp=tp, pp=pp, rope_interleaved=interleaved,
            make_vocab_size_divisible_by=8, backend="torch", progress=False)
    mc = json.loads((tmp_path / "nt" / "0" / "model_config.json").read_text())
    assert mc["vocab_size"] == -(-60 // (8 * tp)) * 8 * tp
    assert mc["rope_interleaved"] is (interleaved == "true")
    convert(tmp_path / "nt", tmp_path / "back", to="hf", dtype="keep", vocab_size=60, backend="torch", progress=False)
    got = load_file(tmp_path / "back" / "model.safetensors")
    assert sorted(got) == sorted(w)
    for k in w:
        assert torch.equal(bits(got[k]), bits(w[k])), k


def test_nanotron_hf_nanotron_bit_exact(tmp_path):
    src = fixture("nanotron", "tp2_pp2")
    convert(src, tmp_path / "hf", to="hf", dtype="keep", backend="torch", progress=False)
    convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", tp=2, pp=2, backend="torch", progress=False)
    assert_same_checkpoint(tmp_path / "nt", src)


def test_vocab_padding_rows_are_zero(tmp_path):
    w = random_hf(CFG, dtype=torch.float32)
    write_hf(tmp_path / "hf", CFG, w)
    convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", tp=2, pp=1, vocab_size=50, make_vocab_size_divisible_by=8,
            backend="torch", progress=False)
    assert json.loads((tmp_path / "nt" / "0" / "model_config.json").read_text())["vocab_size"] == 64
    emb = tmp_path / "nt/0/model/model/token_position_embeddings/pp_block/token_embedding"
    t0 = load_file(emb / "model_weight_pp-rank-0-of-1_tp-rank-0-of-2.safetensors")["data"]
    t1 = load_file(emb / "model_weight_pp-rank-0-of-1_tp-rank-1-of-2.safetensors")["data"]
    assert torch.equal(torch.cat([t0, t1])[:50], w["model.embed_tokens.weight"][:50])
    assert torch.count_nonzero(t1[50 - 32 :]) == 0


def test_refuses_tp_that_splits_kv_heads(tmp_path):
    write_hf(tmp_path / "hf", CFG, random_hf(CFG))
    with pytest.raises(NanokernError, match="num_key_value_heads"):
        convert(tmp_path / "hf", tmp_path / "nt", to="nanotron", tp=8, backend="torch", progress=False)
    assert not (tmp_path / "nt").exists()
