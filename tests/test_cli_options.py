"""`nanokern convert`'s options that only describe Nanotron output imply `--to nanotron`, zero
sizes are refused, and every error (click's usage errors included) is one `error:` line, exit 1."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from fixtures_path import fixture

from nanokern.cli import cli


def _plan(tmp_path, *args):
    js = tmp_path / "plan.json"
    r = CliRunner().invoke(cli, ["convert", *map(str, args), "--dry-run", "--json", str(js)])
    return r, (json.loads(js.read_text()) if js.is_file() else None)


@pytest.mark.parametrize("opt", [["--tp", "1", "--pp", "1"], ["--tp", "2"], ["--make-vocab-size-divisible-by", "64"],
                                 ["--nanotron-config", "qwen2"]])
def test_nanotron_only_options_mean_to_nanotron(tmp_path, opt):
    r, info = _plan(tmp_path, fixture("nanotron", "tp2_pp2"), tmp_path / "out", *opt)
    assert r.exit_code == 0, r.output
    assert info["target"] == "nanotron", info


def test_divisible_by_is_not_ignored(tmp_path):
    ck = fixture("nanotron", "tp2_pp2")
    r, implied = _plan(tmp_path, ck, tmp_path / "out", "--make-vocab-size-divisible-by", "100")
    r1, explicit = _plan(tmp_path, ck, tmp_path / "out", "--to", "nanotron", "--make-vocab-size-divisible-by", "100")
    r2, plain = _plan(tmp_path, ck, tmp_path / "out", "--to", "nanotron")
    assert r.exit_code == r1.exit_code == r2.exit_code == 0
    assert implied["bytes"] == explicit["bytes"] != plain["bytes"]  # the vocab is padded to a multiple of 100 x TP


def test_nanotron_options_with_to_hf_refused(tmp_path):
    r = CliRunner().invoke(cli, ["convert", str(fixture("nanotron", "tp2_pp2")), str(tmp_path / "o"), "--to", "hf",
                                 "--make-vocab-size-divisible-by", "64", "--dry-run"])
    assert r.exit_code == 1 and "--to nanotron" in r.stderr, r.output


@pytest.mark.parametrize("opt", ["--tp", "--pp"])
def test_zero_layout_refused(tmp_path, opt):
    r = CliRunner().invoke(cli, ["convert", str(fixture("nanotron", "tp2_pp2")), str(tmp_path / "o"), "--to", "nanotron",
                                 opt, "0", "--dry-run"])
    assert r.exit_code == 1 and opt in r.stderr, r.output
    assert not (tmp_path / "o").exists()


def test_help_says_what_to_nanotron_alone_means():
    r = CliRunner().invoke(cli, ["convert", "--help"])
    assert "TP1 PP1" in " ".join(r.output.split())
    top = CliRunner().invoke(cli, ["--help"])
    assert "convert HF OUT --to nanotron --tp 2 --pp 2" in top.output


@pytest.mark.parametrize("args", [["convert"], ["convert", "a", "b", "--bogus"], ["nosuchcommand"],
                                  ["convert", "a", "b", "--dtype", "fp8"], ["bench", "convert", "--reps", "0"],
                                  ["generate", "x"]])
def test_usage_errors_are_one_error_line_exit_1(args, tmp_path):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 1, (r.exit_code, r.output)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "Usage:" not in r.output


def test_no_arguments_still_prints_help():
    r = CliRunner().invoke(cli, [])
    assert "convert" in r.output and "error" not in r.output
