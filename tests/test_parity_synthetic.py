"""Parity on synthetic Nanotron checkpoints with large weights (attention far from uniform), written
by the independent test writer in tests/nt_reference.py: interleaved RoPE (absent from the real
fixtures), TP=2 with GQA, and controls that fail in bf16 as well as fp32."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from nanokern.errors import NanokernError
from nanokern.parity import NativeModel, run_parity
from nt_reference import interleave_rows, random_hf, write_nanotron

CFG = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
       "num_key_value_heads": 2, "vocab_size": 128, "tie_word_embeddings": False}
D = 16


def write_hf(path, w, cfg=CFG):
    """A HF folder from HF-named tensors (no nanokern code involved)."""
    from transformers import LlamaConfig

    path.mkdir(parents=True)
    LlamaConfig(hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
                num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
                num_key_value_heads=cfg["num_key_value_heads"], vocab_size=cfg["vocab_size"], rms_norm_eps=1e-5,
                rope_theta=10000.0, tie_word_embeddings=cfg["tie_word_embeddings"], max_position_embeddings=128,
                ).save_pretrained(path)
    save_file({k: v.contiguous() for k, v in w.items()}, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    w = random_hf(CFG, scale=0.2, seed=1)
    ck = write_nanotron(root / "nt", w, CFG, tp=2, pp=1, interleaved=True)
    return {"root": root, "w": w, "ck": ck, "hf": write_hf(root / "hf", w)}


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_interleaved_tp2_gqa_parity_fp32(synth, backend):
    rep = run_parity(synth["ck"], synth["hf"], dtype="fp32", backend=backend)
    assert rep.passed, rep.table()
    assert rep.rope_interleaved and rep.tp == 2
    assert rep.logits.metrics["scale"] > 3  # logits with real structure
    assert rep.logits.metrics["top1_counted"] >= 60


def test_interleaved_tp2_gqa_parity_bf16(synth):
    rep = run_parity(synth["ck"], synth["hf"], dtype="bf16", backend="torch")
    assert rep.passed, rep.table()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_qk_misplaced_rows_fail_with_structured_weights(synth, dtype, tmp_path):
    """q/k rows of ONE layer left in Nanotron's interleaved order: fails even in bf16 here."""
    w = dict(synth["w"])
    for x in ("q", "k"):
        key = f"model.layers.1.self_attn.{x}_proj.weight"
        w[key] = interleave_rows(w[key], D)
    rep = run_parity(synth["ck"], write_hf(tmp_path / "bad", w), dtype=dtype, backend="torch")
    assert not rep.passed, rep.table()
    assert rep.first_failure().name == "layer 1"
    assert rep.logits.metrics["max_abs"] > 0.1


def test_export_that_ignores_rope_interleaved_fails(synth, tmp_path):
    """What Nanotron's own script does since 2025-03 (never un-permutes q/k): caught."""
    w = dict(synth["w"])
    for i in range(CFG["num_hidden_layers"]):
        for x in ("q", "k"):
            key = f"model.layers.{i}.self_attn.{x}_proj.weight"
            w[key] = interleave_rows(w[key], D)
    rep = run_parity(synth["ck"], write_hf(tmp_path / "bad", w), dtype="fp32", backend="torch")
    assert not rep.passed and rep.first_failure().name == "layer 0"


def test_converter_export_of_interleaved_checkpoint_passes(synth):
    rep = run_parity(synth["ck"], dtype="fp32", backend="torch")  # nanokern.convert into a temp folder
    assert rep.passed, rep.table()


def test_missing_rope_interleaved_key_means_interleaved(synth, tmp_path):
    ck = write_nanotron(tmp_path / "old", synth["w"], CFG, tp=1, pp=1, interleaved=True, write_rope_key=False)
    rep = run_parity(ck, synth["hf"], dtype="fp32", backend="torch")
    assert rep.passed and rep.rope_interleaved, rep.table()


def test_tied_tp2_pp2(tmp_path):
    cfg = {**CFG, "tie_word_embeddings": True, "num_hidden_layers": 3}
    w = random_hf(cfg, scale=0.2, seed=2)
    ck = write_nanotron(tmp_path / "nt", w, cfg, tp=2, pp=2, interleaved=False)
    rep = run_parity(ck, write_hf(tmp_path / "hf", w, cfg), dtype="fp32", backend="triton")
    assert rep.passed, rep.table()


def test_shards_are_read_by_their_slice_metadata(synth, tmp_path):
    """o_proj shards swapped between TP ranks (file names exchanged): the metadata says rank 0's
    file holds the columns of rank 1's heads; a TP rank could not compute with that."""
    root = tmp_path / "nt"
    shutil.copytree(synth["ck"], root)
    o = root / "0" / "model" / "model" / "decoder" / "0" / "pp_block" / "attn" / "o_proj"
    a, b = (o / f"model_weight_pp-rank-0-of-1_tp-rank-{t}-of-2.safetensors" for t in (0, 1))
    a.rename(o / "tmp")
    b.rename(a)
    (o / "tmp").rename(b)
    with pytest.raises(NanokernError, match=r"o_proj TP rank 0 holds columns \[32:64\]"):
        NativeModel(root, "fp32", "torch")


def test_native_forward_matches_a_tp1_checkpoint_of_the_same_weights(synth, tmp_path):
    """TP=2 (per-rank parts, emulated all-reduce) and TP=1 give the same logits in fp32."""
    ck1 = write_nanotron(tmp_path / "tp1", synth["w"], CFG, tp=1, pp=1, interleaved=True)
    ids = torch.randint(0, CFG["vocab_size"], (1, 24), generator=torch.Generator().manual_seed(0))
    a = NativeModel(synth["ck"], "fp32", "torch")(ids).logits
    b = NativeModel(ck1, "fp32", "torch")(ids).logits
    assert float((a - b).abs().max()) < 1e-4
    assert len(NativeModel(synth["ck"], "fp32", "torch").layers[0].attn) == 2
