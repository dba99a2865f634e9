"""Generation straight from the Nanotron shards (nanokern/generate) against transformers'
generate() on the export, on the real fixtures: 32 greedy tokens equal for prompts of 1 and 17
tokens, batch 1 and 2 (fp32, every family; torch backend on all four, the Triton backend on one
each), the same decoder over the HF folder, bf16 up to the first near-tie, and the decoder's
negative controls (a cache slot off by one, RoPE at offset 0 on every step, a window that never
slides), which must FAIL the token-by-token check.

Runtime: tiny models (hidden <= 96, 4 layers); transformers' models are loaded once per fixture.
"""

from __future__ import annotations

import functools

import pytest
import torch

from fixtures_path import fixture
from marks import slow_except
from nanokern.generate.decoder import Decoder
from nanokern.generate.hf_model import hf_native_model
from nanokern.generate.reference import hf_generate
from nanokern.generate.check import run_generate_parity
from nanokern.parity.native import NativeModel

FP32 = ["qwen2_dense_tp1_pp1", "qwen2_bias_tp1_pp2", "smollm3_nope_tp1_pp1_tied", "qwen2_swa_tp2_pp1", "qwen2_moe_tp1_pp2",
        "tp1_pp1_fp32"]
N = 32
SHAPES = [(1, 1), (1, 17), (2, 1), (2, 17)]  # (batch, prompt length)
# the Triton backend (interpreter: slow) on one shape per fixture, every shape covered
TRITON_SHAPE = dict(zip(FP32, [(2, 17), (1, 1), (2, 1), (1, 17), (2, 17), (1, 1)]))


@functools.lru_cache(maxsize=None)
def _hf(path: str, dtype=torch.float32):
    from nanokern.parity.reference import load_hf

    return load_hf(path, dtype, torch.device("cpu"), "eager")


@functools.lru_cache(maxsize=None)
def _native(name: str, backend: str, dtype: str = "fp32"):
    return NativeModel(fixture("nanotron", name), dtype, backend, "cpu")


def _prompt(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 250, (batch, length), generator=torch.Generator().manual_seed(seed))


@functools.lru_cache(maxsize=None)
def _reference(path: str, batch: int, length: int, seed: int):
    return hf_generate(_hf(path), _prompt(batch, length, seed), N)


@pytest.mark.parametrize("name", slow_except(FP32, ["qwen2_moe_tp1_pp2"]))  # fast loop: one (MoE, PP=2)
def test_greedy_tokens_equal_transformers_fp32(name, exports):
    hf_dir = str(exports(name))
    vocab = _hf(hf_dir).config.vocab_size
    dec = Decoder(_native(name, "torch"), vocab=vocab)
    from_hf = Decoder(hf_native_model(hf_dir, "fp32", "torch", "cpu"), vocab=vocab)
    seen = set()
    for k, (B, S) in enumerate(SHAPES):
        ref = _reference(hf_dir, B, S, k)
        got = dec.generate(_prompt(B, S, k), N)
        assert got.new_ids == ref.new_ids, (name, B, S)
        assert from_hf.generate(_prompt(B, S, k), N).new_ids == ref.new_ids, ("HF folder", name, B, S)
        assert all(len(x) == N for x in got.new_ids)
        seen.update(i for x in got.new_ids for i in x)
    assert len(seen) >= 12  # real continuations, not one id repeated (random models do fall into loops)


@pytest.mark.slow
@pytest.mark.parametrize("name", FP32)
def test_greedy_tokens_equal_transformers_fp32_triton(name, exports):
    hf_dir = str(exports(name))
    B, S = TRITON_SHAPE[name]
    k = SHAPES.index((B, S))
    got = Decoder(_native(name, "triton"), vocab=_hf(hf_dir).config.vocab_size).generate(_prompt(B, S, k), N)
    assert got.new_ids == _reference(hf_dir, B, S, k).new_ids


def test_sliding_window_generates_past_the_window(exports):
    """Window 6: a 1-token prompt + 32 new tokens slides the window 27 times on every RoPE layer,
    and the ring cache holds only 6 positions (the ones the window sees)."""
    name = "qwen2_swa_tp2_pp1"
    m = _native(name, "torch")
    assert m.spec.sliding_window == 6 and len(m.layers[0].attn) == 2
    dec = Decoder(m)
    cache = dec.new_cache(1, 1 + N)
    assert all(c.k.shape[1] == 6 for layer in cache.layers for c in layer)
    hf_dir = str(exports(name))
    assert dec.generate(_prompt(1, 1, 0), N).new_ids == _reference(hf_dir, 1, 1, 0).new_ids


def test_prefill_and_decode_logits_match_the_forward():
    """The prefill's last logits and each decode step's equal the parity forward over the whole
    sequence at that position (fp32 rounding: the prefill runs the forward's own attention, the
    lm_head sees one row instead of all)."""
    for name in ("qwen2_swa_tp2_pp1", "smollm3_nope_tp1_pp1_tied", "qwen2_moe_tp1_pp2"):
        m = _native(name, "torch")
        dec = Decoder(m)
        g = dec.generate(_prompt(2, 5, 3), 12, keep_logits=True)
        seq = torch.cat([torch.tensor(g.prompt_ids), torch.tensor(g.new_ids)], 1)
        full = m(seq).logits
        for j in range(12):
            torch.testing.assert_close(g.logits[j], full[:, 4 + j], rtol=0, atol=2e-5)


@pytest.mark.parametrize("name, fault", slow_except([  # fast loop: each fault once
                                         ("qwen2_dense_tp1_pp1", "cache_slot"), ("smollm3_nope_tp1_pp1_tied", "rope_offset0"),
                                         ("qwen2_bias_tp1_pp2", "rope_offset0"), ("qwen2_swa_tp2_pp1", "window_static"),
                                         ("qwen2_moe_tp1_pp2", "cache_slot")],
                                         [("qwen2_dense_tp1_pp1", "cache_slot"), ("smollm3_nope_tp1_pp1_tied", "rope_offset0"),
                                          ("qwen2_swa_tp2_pp1", "window_static")]))
def test_negative_controls_fail(name, fault, exports):
    """One decoder semantic broken: the token-by-token check fails on its own (a difference whose
    gap in the reference's logits is above the fp32 noise floor), where the correct decoder
    passes with every token equal."""
    hf_dir = exports(name)
    good = run_generate_parity(fixture("nanotron", name), hf_dir, N, "fp32", "torch", device="cpu", native=_native(name, "torch"))
    assert good.passed and good.all_equal, good.table()
    assert all(s.logits_max_abs <= good.logits_limit for s in good.seqs)
    bad = run_generate_parity(fixture("nanotron", name), hf_dir, N, "fp32", "torch", device="cpu", fault=fault,
                              native=_native(name, "torch"))
    assert not bad.passed, bad.table()
    assert any(s.first_diff is not None and s.ref_gap > bad.threshold and s.failed for s in bad.seqs), bad.table()
    assert f"FAULT {fault}" in bad.table() and "FAIL" in bad.table()


def test_negative_control_on_a_near_uniform_model_fails_by_its_logits(exports):
    """The LLaMA fp32 fixture's logits are nearly flat (scale 0.8): RoPE at offset 0 flips none
    of the 32 tokens of the parity prompts, but the logits up to the first difference are far
    outside the fp32 rule, so the check still fails."""
    name = "tp1_pp1_fp32"
    bad = run_generate_parity(fixture("nanotron", name), exports(name), N, "fp32", "torch", device="cpu",
                              fault="rope_offset0", native=_native(name, "torch"))
    assert not bad.passed and all(s.logits_max_abs > 10 * bad.logits_limit for s in bad.seqs), bad.table()


def test_negative_control_fails_in_bf16(exports):
    name = "qwen2_dense_tp1_pp1_bf16"
    bad = run_generate_parity(fixture("nanotron", name), exports(name), N, "bf16", "torch", device="cpu", fault="rope_offset0")
    assert not bad.passed and any(s.first_diff is not None and s.ref_gap > bad.threshold for s in bad.seqs), bad.table()


def test_faults_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="no sliding window"):
        Decoder(_native("qwen2_dense_tp1_pp1", "torch"), fault="window_static")
    with pytest.raises(ValueError, match="unknown fault"):
        Decoder(_native("qwen2_dense_tp1_pp1", "torch"), fault="nope")


@pytest.mark.parametrize("name", slow_except(["qwen2_dense_tp1_pp1_bf16", "tp2_pp2", "tp2_pp1_tied"], ["tp2_pp2"]))
def test_bf16_agrees_up_to_the_first_near_tie(name, exports):
    """bf16 on both sides: every difference (if any) sits where transformers' own logits are
    within the self-calibrated bf16 noise floor of a tie."""
    rep = run_generate_parity(fixture("nanotron", name), exports(name), N, "bf16", "torch", device="cpu")
    assert rep.passed, rep.table()
    assert rep.floor_max_abs > 1e-3 and rep.threshold >= 2 * rep.floor_max_abs
    for s in rep.seqs:
        assert s.first_diff is None or s.ref_gap <= rep.threshold
        assert 0 < s.logits_max_abs <= rep.logits_limit  # bf16 noise, within the forward's rule


@pytest.mark.parametrize("family", slow_except(["llama", "qwen2_bias", "qwen2_swa", "smollm3_nope", "qwen2_moe"],
                                              ["llama"]))  # fast loop: LLaMA (and its half-split control)
def test_hf_family_imported_interleaved_tp2_pp2_generates_like_transformers(family, tmp_path):
    """transformers' own random models of every family (tests/hf_families.py: 6 layers, window 5,
    NoPE every 3rd layer, MoE with dense layers between), imported at TP=2 x PP=2 with interleaved
    RoPE (q/k rows permuted per head in the shards): decoding from those shards equals
    transformers' generate() on the original folder, 32 tokens, prompts of 1 and 9 tokens."""
    from hf_families import build
    from nanokern.convert import convert
    from nanokern.formats.nanotron import read_checkpoint

    hf = build(family, tmp_path / "hf", seed=5)
    convert(hf, tmp_path / "nt", to="nanotron", tp=2, pp=2, rope_interleaved="true", force=True, progress=False)
    ck = read_checkpoint(tmp_path / "nt")
    assert ck.tp == 2 and ck.pp == 2 and ck.rope_interleaved
    native = NativeModel(ck, "fp32", "torch", "cpu")
    for seq_len, batch in ((1, 1), (9, 2)):
        rep = run_generate_parity(ck, hf, N, "fp32", "torch", seq_len=seq_len, batch=batch, device="cpu", native=native)
        assert rep.passed and rep.all_equal, rep.table()
    if family == "llama":  # the same shards read as half-split: the check fails
        native.interleaved = False
        bad = run_generate_parity(ck, hf, N, "fp32", "torch", seq_len=9, batch=2, device="cpu", native=native)
        assert not bad.passed, bad.table()


@pytest.mark.slow
@pytest.mark.parametrize("name", FP32)
def test_unequal_prompts_left_padded_equal_transformers(name, exports):
    """Prompts of 1, 17 and 9 tokens in one batch, left-padded (transformers: an attention mask):
    32 greedy tokens equal transformers' generate() on the export, and each sequence equals its
    own batch-1 generation (no real token attends to a pad, positions count from the first real
    token). The Triton backend on the TP=2 sliding-window fixture."""
    hf_dir = str(exports(name))
    g = torch.Generator().manual_seed(11)
    prompts = [torch.randint(0, 250, (n,), generator=g).tolist() for n in (1, 17, 9)]
    ref = hf_generate(_hf(hf_dir), prompts, N)
    dec = Decoder(_native(name, "torch"), vocab=_hf(hf_dir).config.vocab_size)
    got = dec.generate(prompts, N)
    assert got.prompt_ids == prompts and got.new_ids == ref.new_ids
    assert got.new_ids[0] == dec.generate([prompts[0]], N).new_ids[0]
    if name == "qwen2_swa_tp2_pp1":  # the 1- and 9-token prompts (the interpreter is slow)
        tri = Decoder(_native(name, "triton"), vocab=_hf(hf_dir).config.vocab_size).generate([prompts[0], prompts[2]], N)
        assert tri.new_ids == [ref.new_ids[0], ref.new_ids[2]]
