"""The tokenizer a Nanotron checkpoint names (config.yaml's tokenizer.tokenizer_name_or_path): a
local folder or a hub id in the local HF cache (offline) is used by default by `convert` and
`generate`, with one line saying so; none found: the export goes on, with one line saying how
to add one. The import records its source folder; a tokenizer smaller than the exported rows
gets a --vocab-size hint."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from click.testing import CliRunner
from fixtures_path import fixture

from nanokern.cli import cli


def make_tokenizer(folder, n_words: int = 200):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<s>": 2, **{f"w{i}": i + 3 for i in range(n_words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok") / "tok")


def checkpoint_naming(tmp_path, name, fixture_name="tp2_pp2"):
    """A copy of a fixture whose config.yaml names `name` as its tokenizer."""
    ck = tmp_path / "ck"
    shutil.copytree(fixture("nanotron", fixture_name), ck)
    step = next(p for p in ck.iterdir() if (p / "config.yaml").is_file())
    cfg = yaml.safe_load((step / "config.yaml").read_text())
    cfg.setdefault("tokenizer", {})["tokenizer_name_or_path"] = name
    (step / "config.yaml").write_text(yaml.safe_dump(cfg))
    return ck


def fake_hub_cache(root, repo_id, tok_src):
    """The layout huggingface_hub's cache has: models--org--name/{refs/main, snapshots/<rev>/...}."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    rev = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / rev
    shutil.copytree(tok_src, snap)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(rev)
    return snap


def _convert(*args):
    return CliRunner().invoke(cli, ["convert", *map(str, args), "-q"])


def _tok_lines(r):
    return [ln for ln in r.stderr.splitlines() if ln.startswith("tokenizer:")]


def test_local_folder_named_in_config_yaml(tmp_path, tok_dir):
    ck = checkpoint_naming(tmp_path, str(tok_dir))
    r = _convert(ck, tmp_path / "hf")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hf" / "tokenizer.json").is_file()
    lines = _tok_lines(r)
    assert len(lines) == 1 and str(tok_dir) in lines[0] and "config.yaml" in lines[0], r.stderr
    # 203 tokens, 256 rows: the hint names the flag and the number
    assert "--vocab-size 203" in r.stderr, r.stderr
    r = _convert(ck, tmp_path / "hf2", "--vocab-size", 203)
    assert r.exit_code == 0 and "--vocab-size 203" not in r.stderr
    assert json.loads((tmp_path / "hf2" / "config.json").read_text())["vocab_size"] == 203


def test_hub_id_in_the_local_hf_cache(tmp_path, tok_dir, monkeypatch):
    hub = tmp_path / "hub"
    snap = fake_hub_cache(hub, "someorg/tiny-tok", tok_dir)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ck = checkpoint_naming(tmp_path, "someorg/tiny-tok")
    r = _convert(ck, tmp_path / "hf")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "hf" / "tokenizer.json").read_bytes() == (snap / "tokenizer.json").read_bytes()
    lines = _tok_lines(r)
    assert len(lines) == 1 and "someorg/tiny-tok" in lines[0] and "HF cache" in lines[0], r.stderr


@pytest.mark.parametrize("name", ["someorg/not-cached", None, "/no/such/folder"])
def test_no_tokenizer_found_exports_anyway(tmp_path, monkeypatch, name):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    ck = checkpoint_naming(tmp_path, name)
    r = _convert(ck, tmp_path / "hf")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "hf" / "tokenizer.json").exists()
    lines = _tok_lines(r)
    assert len(lines) == 1 and "no tokenizer" in lines[0] and "--tokenizer DIR" in lines[0], r.stderr


def test_explicit_tokenizer_says_nothing_more(tmp_path, tok_dir):
    ck = checkpoint_naming(tmp_path, "someorg/not-cached")
    r = _convert(ck, tmp_path / "hf", "--tokenizer", tok_dir, "--vocab-size", 203)
    assert r.exit_code == 0 and not _tok_lines(r), r.stderr


def test_import_records_its_source_and_the_export_finds_it(tmp_path, tok_dir):
    hf = tmp_path / "hf"
    assert _convert(fixture("nanotron", "tp2_pp2"), hf, "--tokenizer", tok_dir, "--vocab-size", 203).exit_code == 0
    r = _convert(hf, tmp_path / "nt", "--tp", 2)
    assert r.exit_code == 0, r.output
    cfg = yaml.safe_load(next((tmp_path / "nt").glob("*/config.yaml")).read_text())
    assert cfg["tokenizer"]["tokenizer_name_or_path"] == str(hf.resolve())
    r = _convert(tmp_path / "nt", tmp_path / "back")
    assert r.exit_code == 0 and (tmp_path / "back" / "tokenizer.json").is_file(), r.output
    # an import from a folder without a tokenizer records none
    bare = tmp_path / "bare"
    assert _convert(fixture("nanotron", "tp2_pp2"), bare).exit_code == 0
    assert _convert(bare, tmp_path / "nt2").exit_code == 0
    cfg = yaml.safe_load(next((tmp_path / "nt2").glob("*/config.yaml")).read_text())
    assert cfg["tokenizer"]["tokenizer_name_or_path"] is None


def test_generate_uses_the_named_tokenizer(tmp_path, tok_dir):
    ck = checkpoint_naming(tmp_path, str(tok_dir), "qwen2_dense_tp1_pp1")
    r = CliRunner().invoke(cli, ["generate", str(ck), "--prompt", "w1 w2 w3", "--max-new-tokens", "3", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    lines = _tok_lines(r)
    assert len(lines) == 1 and str(tok_dir) in lines[0], r.stderr
    ck2 = checkpoint_naming(tmp_path / "b", None, "qwen2_dense_tp1_pp1")
    r = CliRunner().invoke(cli, ["generate", str(ck2), "--prompt", "w1", "--device", "cpu"])
    assert r.exit_code == 1 and "--tokenizer DIR" in r.stderr and "no tokenizer" in r.stderr, r.stderr
