"""Plans without real data: layouts, PP ownership, GQA, TP 1/2/4/8, tied, padded vocab, RoPE
conventions and file-name variants, on synthetic checkpoints written by an independent writer."""

from __future__ import annotations

import pytest
import torch
from helpers import bits
from nt_reference import random_hf, write_nanotron
from safetensors.torch import load_file

from nanokern.convert import convert, make_plan
from nanokern.arch.spec import ModelSpec
from nanokern.formats.nanotron.layout import parse_file_name, pp_stage_blocks
from nanokern.io.slices import format_pairs, parse_pairs, parse_unsharded_shape


def stages(owner, pp):
    out = []
    for r in range(pp):
        blocks = [b for b, o in owner.items() if o == r and b not in ("cast_to_fp32", "loss")]
        out.append(blocks)
    return out


def layers(a, b):
    return [f"decoder.{i}" for i in range(a, b + 1)]


@pytest.mark.parametrize(
    "L,H,I,nq,V,P,expected",
    [
        # nanotron-format.md §3.8 examples, and the real tp2_pp2 fixture
        (32, 4096, 11008, 32, 32000, 4, [["embedding", *layers(0, 8)], layers(9, 16), layers(17, 24), [*layers(25, 31), "final_norm", "lm_head"]]),
        (28, 2048, 11008, 16, 128256, 2, [["embedding", *layers(0, 15)], [*layers(16, 27), "final_norm", "lm_head"]]),
        (4, 512, 1024, 8, 4096, 4, [["embedding", *layers(0, 1)], layers(2, 2), layers(3, 3), ["final_norm", "lm_head"]]),
        (4, 64, 160, 4, 256, 2, [["embedding", *layers(0, 2)], [*layers(3, 3), "final_norm", "lm_head"]]),
    ],
)
def test_pp_stage_ownership(L, H, I, nq, V, P, expected):
    spec = ModelSpec(hidden_size=H, intermediate_size=I, num_hidden_layers=L, num_attention_heads=nq, num_key_value_heads=nq, vocab_size=V)
    assert stages(pp_stage_blocks(spec, V, P), P) == expected


def test_slice_metadata_encoding():
    text = "0,32,None|None,None,None#0,32,None|None,None,None;32,48,None|None,None,None#64,80,None|None,None,None;48,64,None|None,None,None#96,112,None|None,None,None"
    pairs = parse_pairs(text, (64, 64), parse_unsharded_shape("(np.int64(128), 64)"))
    assert pairs[1] == (((32, 48), (0, 64)), ((64, 80), (0, 64)))
    assert format_pairs(pairs, 0, chunked=True) == text
    row_parallel = "None,None,None|None,None,None#None,None,None|32,64,None"
    p = parse_pairs(row_parallel, (64, 32), (64, 64))
    assert format_pairs(p, 1, chunked=False) == row_parallel
    assert parse_unsharded_shape("(6144, 4096)") == (6144, 4096)


def test_both_file_naming_variants():
    new = parse_file_name("model_weight_pp-rank-1-of-2_tp-rank-0-of-4.safetensors")
    old = parse_file_name("model_model_weight.safetensors_pp-rank-1-of-2_tp-rank-0-of-4.safetensors")
    for info in (new, old):
        assert (info["pp"], info["pp_size"], info["tp"], info["tp_size"]) == (1, 2, 0, 4)
    assert old["bad_naming"] and not new["bad_naming"]
    assert parse_file_name("model_weight.safetensors")["sharded"] is False
    assert parse_file_name("optimizer_pp-0-of-1_tp-0-of-1_exp-0-of-1.pt") is None


def cfg(nq=8, nkv=4, H=64, I=96, L=3, V=64, tied=False):
    return dict(num_hidden_layers=L, hidden_size=H, intermediate_size=I, num_attention_heads=nq,
                num_key_value_heads=nkv, vocab_size=V, tie_word_embeddings=tied)


CASES = {
    "tp1_pp1": dict(c=cfg(), tp=1, pp=1),
    "tp2_pp3_gqa": dict(c=cfg(), tp=2, pp=3),
    "tp4_pp2_gqa": dict(c=cfg(nq=8, nkv=4), tp=4, pp=2),
    "tp8_pp1_mha": dict(c=cfg(nq=8, nkv=8), tp=8, pp=1),
    "tp2_tied_pp2": dict(c=cfg(tied=True), tp=2, pp=2),
    "tp2_interleaved": dict(c=cfg(), tp=2, pp=1, interleaved=True),
    "legacy_no_rope_key_interleaved": dict(c=cfg(), tp=2, pp=2, interleaved=True, write_rope_key=False),
    "bad_naming_np_int64": dict(c=cfg(), tp=2, pp=2, bad_naming=True, np_int64=True),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_synthetic_layouts_export_bit_exact(case, tmp_path):
    spec = dict(CASES[case])
    c = spec.pop("c")
    hf = random_hf(c, dtype=torch.bfloat16)
    src = write_nanotron(tmp_path / "nt", hf, c, **spec)
    plan = make_plan(src, "hf", "keep")
    q = plan_tensor(plan, "model.layers.0.self_attn.q_proj.weight")
    assert len({p.ref.path for p in q.pieces}) == spec["tp"]  # one piece source per TP shard
    convert(src, tmp_path / "hf", dtype="keep", backend="torch", progress=False)
    got = load_file(tmp_path / "hf" / "model.safetensors")
    assert sorted(got) == sorted(hf)
    for k in hf:
        assert torch.equal(bits(got[k]), bits(hf[k])), k


def plan_tensor(plan, name):
    return next(t for f in plan.files for t in f.tensors if t.name == name)


def test_interleaved_checkpoint_read_as_half_split_is_wrong(tmp_path):
    """Forcing the wrong convention must change q/k (so the permutation is really applied)."""
    c = cfg()
    hf = random_hf(c, dtype=torch.bfloat16)
    src = write_nanotron(tmp_path / "nt", hf, c, tp=2, interleaved=True)
    convert(src, tmp_path / "hf", dtype="keep", backend="torch", progress=False, rope_interleaved="false")
    got = load_file(tmp_path / "hf" / "model.safetensors")
    k = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[k], hf[k])
    v = "model.layers.0.self_attn.v_proj.weight"
    assert torch.equal(got[v], hf[v])


def test_padded_vocab_trim_and_shards(tmp_path):
    c = cfg(V=64)
    hf = random_hf(c, dtype=torch.float32)
    src = write_nanotron(tmp_path / "nt", hf, c, tp=2)
    plan = make_plan(src, "hf", "bf16", vocab_size=50, max_shard_size="40KB")
    assert plan_tensor(plan, "model.embed_tokens.weight").shape == (50, 64)
    assert plan_tensor(plan, "lm_head.weight").shape == (50, 64)
    assert len(plan.files) > 1 and all(f.size <= 40_000 + 1024 or len(f.tensors) == 1 for f in plan.files)
    assert "model.safetensors.index.json" in plan.aux
