"""`--json` on every command: alone (or `--json -`) the JSON report is the whole of stdout (the
human lines go to stderr); `--json PATH` writes the file and leaves stdout to the human lines."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner
from fixtures_path import fixture

from nanokern.cli import cli


def _invoke(args, tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a file named "-" would appear here
    try:
        return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(cwd)


def _commands(tmp_path):
    ck = fixture("nanotron", "tp2_pp2")
    return {
        "convert": ["convert", ck, tmp_path / "out", "-q"],
        "convert-dry": ["convert", ck, tmp_path / "dry", "--dry-run"],
        "inspect": ["inspect", ck],
        "verify": ["verify", ck],
        "generate": ["generate", fixture("nanotron", "qwen2_dense_tp1_pp1"), "--prompt-ids", "1 2", "--max-new-tokens", 2,
                     "--device", "cpu"],
    }


@pytest.mark.parametrize("name", ["convert", "convert-dry", "inspect", "verify", "generate"])
@pytest.mark.parametrize("form", [["--json"], ["--json", "-"]])
def test_json_to_stdout(tmp_path, name, form):
    args = _commands(tmp_path)[name]
    r = _invoke([*args, *form], tmp_path)
    assert r.exit_code == 0, (r.output, r.stderr)
    data = json.loads(r.stdout)  # nothing else on stdout
    assert isinstance(data, dict) and data
    assert not (tmp_path / "-").exists()


@pytest.mark.parametrize("name", ["convert", "inspect", "verify", "generate"])
def test_json_to_a_file(tmp_path, name):
    args = _commands(tmp_path)[name]
    js = tmp_path / "r.json"
    r = _invoke([*args, "--json", js], tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads(js.read_text())
    assert r.stdout.strip()  # the human lines stay on stdout


def test_json_error_report_to_stdout(tmp_path):
    r = _invoke(["convert", tmp_path / "missing", tmp_path / "o", "--json"], tmp_path)
    assert r.exit_code == 1
    assert json.loads(r.stdout)["ok"] is False and r.stderr.startswith("error: ")


@pytest.mark.slow
def test_parity_json_to_stdout(tmp_path):
    r = _invoke(["parity", fixture("nanotron", "tp1_pp1_fp32"), "--device", "cpu", "--batch", 1, "--seq-len", 4, "--json"],
                tmp_path)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["passed"] is True
