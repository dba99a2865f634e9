"""`nanokern generate` (python -m nanokern.generate.cli), `parity --generate N` and
`bench generate` through click's CliRunner, with a tokenizer built in code."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from fixtures_path import fixture
from nanokern.bench.generate import generate_cmd as bench_generate
from nanokern.cli import cli
from nanokern.errors import NanokernError
from nanokern.generate.cli import generate
from nanokern.parity_cli import parity


def make_tokenizer(folder, n_words: int = 200):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, **{f"w{i}": i + 3 for i in range(n_words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    from nanokern.convert import convert

    dst = tmp_path_factory.mktemp("hf") / "swa"
    convert(fixture("nanotron", "qwen2_swa_tp2_pp1"), dst, to="hf", dtype="keep", force=True, progress=False)
    return dst


def _run(cmd, args):
    r = CliRunner().invoke(cmd, [str(a) for a in args], catch_exceptions=True)
    return r


def test_generate_text_nanotron_and_hf_folder_agree(tok_dir, export, tmp_path):
    """The same prompt through the TP=2 Nanotron checkpoint and through its HF export: the same
    text, streamed, and --json holds the ids and timings."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tok_dir)
    outs = []
    for src in (fixture("nanotron", "qwen2_swa_tp2_pp1"), export):
        js = tmp_path / f"{len(outs)}.json"
        r = _run(generate, [src, "--prompt", "w1 w2 w3 w4", "--tokenizer", tok_dir, "--max-new-tokens", 12, "--backend",
                            "torch", "--device", "cpu", "--json", js])
        assert r.exit_code == 0, r.output
        data = json.loads(js.read_text())
        assert data["prompt_ids"] == [tok("w1 w2 w3 w4")["input_ids"]]
        assert len(data["new_ids"][0]) == 12 and max(data["new_ids"][0]) < len(tok)  # only the tokenizer's ids
        assert data["prefill_tokens_per_s"] > 0 and data["decode_tokens_per_s"] > 0
        assert data["text"][0] in r.output and "tok/s" in r.output
        outs.append((data["source"], data["new_ids"]))
    assert outs[0][0] == "nanotron" and outs[1][0] == "hf" and outs[0][1] == outs[1][1]


def test_generate_prompt_ids_batch_and_sampling(tmp_path):
    ck = fixture("nanotron", "qwen2_moe_tp1_pp2")
    js = tmp_path / "g.json"
    r = _run(generate, [ck, "--prompt-ids", "5,6,7", "--prompt-ids", "8,9,10", "--max-new-tokens", 6, "--device", "cpu",
                        "--json", js])
    assert r.exit_code == 0, r.output
    d = json.loads(js.read_text())
    assert d["prompt_ids"] == [[5, 6, 7], [8, 9, 10]] and [len(x) for x in d["new_ids"]] == [6, 6]
    assert "[0] " in r.output and "[1] " in r.output
    # prompts of different lengths: left-padded, each continued as it would be alone
    r = _run(generate, [ck, "--prompt-ids", "5,6,7", "--prompt-ids", "9", "--max-new-tokens", 6, "--device", "cpu", "--json", js])
    assert r.exit_code == 0 and "left-padded" in r.output, r.output
    padded = json.loads(js.read_text())
    assert padded["prompt_ids"] == [[5, 6, 7], [9]] and padded["new_ids"][0] == d["new_ids"][0]
    _run(generate, [ck, "--prompt-ids", "9", "--max-new-tokens", 6, "--device", "cpu", "--json", js])
    assert padded["new_ids"][1] == json.loads(js.read_text())["new_ids"][0]
    sampled = []
    for seed in (1, 1, 2):
        r = _run(generate, [ck, "--prompt-ids", "5,6,7", "--max-new-tokens", 8, "--temperature", 1.5, "--top-p", 0.95,
                            "--seed", seed, "--device", "cpu", "--json", js])
        assert r.exit_code == 0, r.output
        sampled.append(json.loads(js.read_text())["new_ids"])
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_generate_errors_are_one_line():
    ck = fixture("nanotron", "qwen2_dense_tp1_pp1")
    r = _run(cli, ["generate", ck, "--prompt", "hello", "--device", "cpu"])  # usage errors: one `error:` line, exit 1
    assert r.exit_code == 1 and "--tokenizer" in r.stderr and r.stderr.startswith("error: ")
    r = _run(cli, ["generate", ck, "--prompt-ids", "1,x", "--device", "cpu"])
    assert r.exit_code == 1 and "separated by commas or spaces" in r.stderr
    r = _run(generate, [ck, "--prompt-ids", "1,9999", "--device", "cpu"])
    assert isinstance(r.exception, NanokernError) and "token ids must be in [0, 264)" in str(r.exception)
    assert "\n" not in str(r.exception)


def test_parity_generate_cli(export, tmp_path):
    js = tmp_path / "p.json"
    r = _run(parity, [fixture("nanotron", "qwen2_swa_tp2_pp1"), "--hf", export, "--generate", 8, "--backend", "torch",
                      "--device", "cpu", "--json", js])
    assert r.exit_code == 0, r.output
    assert "generate parity" in r.output and "all 8 tokens equal" in r.output
    d = json.loads(js.read_text())
    assert d["passed"] and d["generate"]["all_equal"] and len(d["generate"]["seqs"]) == 2


def test_bench_generate_writes_a_row(tmp_path):
    out = tmp_path / "generate.csv"
    r = _run(bench_generate, [fixture("nanotron", "qwen2_dense_tp1_pp1"), "--reps", 1, "--new-tokens", 4, "--prompt-len", 3,
                              "--csv", out, "--threads", 1])
    assert r.exit_code == 0, r.output
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 1 and rows[0]["tokens_equal"] == "True" and float(rows[0]["native_decode_tok_s"]) > 0
    assert float(rows[0]["hf_decode_tok_s"]) > 0 and rows[0]["new_tokens"] == "4"


def test_stop_at_eos():
    """eos_id stops the loop once every sequence has produced it (here: the first greedy token of
    sequence 0, so batch 1 stops at once and batch 2 runs on until sequence 1 has it too)."""
    import torch

    from nanokern.generate.decoder import Decoder
    from nanokern.parity.native import NativeModel

    dec = Decoder(NativeModel(fixture("nanotron", "qwen2_dense_tp1_pp1"), "fp32", "torch", "cpu"))
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    full = dec.generate(ids, 12).new_ids
    eos = full[0][0]
    assert dec.generate(ids[:1], 12, eos_id=eos).new_ids == [[eos]]
    two = dec.generate(ids, 12, eos_id=eos).new_ids
    stop = full[1].index(eos) + 1 if eos in full[1] else 12
    assert [len(x) for x in two] == [stop, stop] and two[1] == full[1][:stop]
