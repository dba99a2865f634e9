"""--tokenizer: the tokenizer travels with the HF export, and special-token ids agree."""

from __future__ import annotations

import json

from fixtures_path import fixture

from nanokern.convert import convert


def make_tokenizer(folder, bos="<s>", eos="</s>", pad="<pad>"):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {pad: 0, eos: 1, bos: 2, **{f"w{i}": i + 3 for i in range(200)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=pad))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.save_pretrained(folder)


def test_tokenizer_files_and_special_ids(tmp_path):
    from transformers import AutoTokenizer

    make_tokenizer(tmp_path / "tok")
    plan, rep = convert(fixture("nanotron", "tp2_pp2"), tmp_path / "hf", tokenizer=str(tmp_path / "tok"),
                        vocab_size=250, backend="torch", progress=False)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    gen = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    # the model config said bos 1 / eos 2 / pad None; the tokenizer says bos 2 / eos 1 / pad 0
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    assert (gen["bos_token_id"], gen["eos_token_id"]) == (tok.bos_token_id, tok.eos_token_id)
    assert any("disagrees with the tokenizer" in w for w in plan.warnings)
    assert tok("w5 w7")["input_ids"] == [8, 10]


def test_tokenizer_larger_than_vocab_is_refused(tmp_path):
    import pytest

    from nanokern.errors import NanokernError

    make_tokenizer(tmp_path / "tok")
    with pytest.raises(NanokernError, match="tokenizer has 203 tokens"):
        convert(fixture("nanotron", "tp2_pp2"), tmp_path / "hf", tokenizer=str(tmp_path / "tok"), vocab_size=200,
                backend="torch", progress=False)
    assert not (tmp_path / "hf").exists()
