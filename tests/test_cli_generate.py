"""`nanokern generate`'s command line: prompt ids with spaces or commas, clear messages for a
missing prompt, the bf16 TP note, and a Ctrl-C line of its own."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from fixtures_path import fixture
from helpers import ctrl_c_once

from nanokern.cli import cli
from nanokern.generate.cli import _parse_ids

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, ids", [("1 2 3", [1, 2, 3]), ("1,2,3", [1, 2, 3]), ("1, 2,3 ", [1, 2, 3]),
                                       (" 7 ", [7]), ("1,,2", [1, 2]), ("4\t5", [4, 5])])
def test_prompt_ids_spaces_and_commas(text, ids):
    assert _parse_ids(text) == ids


@pytest.mark.parametrize("text", ["1;2", "1 x", "1.5", "-1", "", " , "])
def test_prompt_ids_refused(text):
    with pytest.raises(click.BadParameter):
        _parse_ids(text)


def _gen(*args):
    return CliRunner().invoke(cli, ["generate", *map(str, args)])


def test_prompt_ids_with_spaces_end_to_end(tmp_path):
    js = tmp_path / "g.json"
    r = _gen(fixture("nanotron", "qwen2_dense_tp1_pp1"), "--prompt-ids", "5 6 7", "--max-new-tokens", 2, "--device", "cpu",
             "--json", js)
    assert r.exit_code == 0, r.output
    assert json.loads(js.read_text())["prompt_ids"] == [[5, 6, 7]]


def test_no_prompt_and_both_prompts():
    ck = fixture("nanotron", "qwen2_dense_tp1_pp1")
    r = _gen(ck, "--device", "cpu")
    assert r.exit_code == 1 and "no prompt" in r.stderr and "not both" not in r.stderr, r.output
    r = _gen(ck, "--prompt", "a", "--prompt-ids", "1", "--device", "cpu")
    assert r.exit_code == 1 and "not both" in r.stderr, r.output


def test_bf16_tp_note():
    ck = fixture("nanotron", "qwen2_swa_tp2_pp1")
    r = _gen(ck, "--prompt-ids", "5,6", "--max-new-tokens", 2, "--device", "cpu", "--dtype", "bf16")
    assert r.exit_code == 0, r.output
    notes = [ln for ln in r.stderr.splitlines() if "partial sums" in ln]
    assert len(notes) == 1 and "bf16" in notes[0] and "TP1" in notes[0], r.stderr
    r = _gen(ck, "--prompt-ids", "5,6", "--max-new-tokens", 2, "--device", "cpu", "--dtype", "fp32")
    assert r.exit_code == 0 and "partial sums" not in r.stderr
    r = _gen(fixture("nanotron", "qwen2_dense_tp1_pp1"), "--prompt-ids", "5,6", "--max-new-tokens", 2, "--device", "cpu",
             "--dtype", "bf16")
    assert r.exit_code == 0 and "partial sums" not in r.stderr


def test_ctrl_c_says_generation_stopped():
    ck = fixture("nanotron", "qwen2_dense_tp1_pp1")
    code, err, _ = ctrl_c_once([sys.executable, "-m", "nanokern", "generate", str(ck), "--prompt-ids", "5,6",
                                "--max-new-tokens", "100000", "--device", "cpu"],
                               lambda out: bool(out.strip()), cwd=REPO)  # once tokens are streaming
    assert code == 130, err
    assert "generation stopped" in err and "nothing kept" not in err and "Traceback" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
