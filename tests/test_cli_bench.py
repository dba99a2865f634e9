"""`nanokern bench convert` for a user running it from anywhere: a temporary cache (not the
current folder), a CSV only where asked, progress while settling, the same labels and figures
in the rep lines and the table, a plot, --size 0 refused, a clean Ctrl-C; and the phase
breakdown of the whole process (where the time goes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import ctrl_c_once

from nanokern.bench.harness import Result
from nanokern.bench.measure import Run
from nanokern.cli import cli

REPO = Path(__file__).resolve().parents[1]


def _result(reps=1):
    res = Result(options={"size": "1GB", "tp": 2, "pp": 2, "dtype": "fp32", "out_dtype": "keep", "workers": None,
                          "backend": "auto", "nproc": 1, "reps": reps, "direction": "import", "arch": "llama",
                          "out_tp": 1, "out_pp": 1},
                 shape={}, source_bytes=10**9, largest_tensor="lm_head", largest_tensor_bytes=100 * 10**6)
    res.runs = {"floor": [Run(2.0, 0, 0, 0.1, 2.0)], "nanokern": [Run(3.0, 3 * 10**8, 10**8, 2.0, 3.5)],
                "cli": [Run(4.25, 10**8, 0, 2.5, 4.25)], "naive": [Run(9.0, 10**9, 10**8, 8.0, 11.0)]}
    from nanokern.bench.report import convert_row

    res.row = convert_row(res, "cpu", (2, 2), timestamp="2026-01-02T03:04:05Z")
    return res


def test_rep_lines_and_table_use_the_same_labels_and_figures():
    from nanokern.bench.report import format_table, rep_line

    res = _result()
    table = format_table(res)
    seen = {}
    for a, runs in res.runs.items():
        line = rep_line(1, 1, a, runs[0])
        for label, secs in re.findall(r"([a-z+ -]+?) ([0-9.]+) s", line.split(":", 1)[1].split(" (cpu")[0]):
            seen[label.strip(" ,")] = secs
    assert set(seen) == {"cp+sync", "nanokern in-process", "nanokern whole process", "naive in-process",
                         "naive whole process"}, seen
    for label, secs in seen.items():
        row = next(ln for ln in table.splitlines() if ln.startswith(label + " "))
        assert row.split()[len(label.split())] == secs, (label, secs, row)
    assert "cli" not in table.split() and not any(" cli " in rep_line(1, 1, a, r[0]) for a, r in res.runs.items())


def test_plot_is_a_png(tmp_path):
    from nanokern.bench.report import plot

    plot(_result(), tmp_path / "b.png")
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phase_breakdown_from_known_figures():
    from nanokern.bench.report import phase_line

    runs = [Run(4.0, 0, 0, 0.0, 4.0, started=100.0, exited=103.5,
                phases={"marks": {"plan": 100.5, "end": 103.4},
                        "seconds": {"plan": 0.25, "prepare": 0.05, "writing": 2.5, "kernel": 1.5, "write": 2.0,
                                    "sync": 0.3, "finish": 0.05, "rename": 0.01,
                                    "batch sync": 0.2, "batch syncs": 4}})]
    line = phase_line(runs)
    for part in ("start-up 0.50 s", "plan 0.25 s", "writing 2.50 s", "sync 0.30 s", "rename 0.01 s", "exit 0.10 s", "sync after exit 0.50 s",
                 "read+kernel 1.50", "write 2.00", "4 sync(s) of finished files, 0.20 s"):
        assert part in line, (part, line)
    assert line.endswith("the phases sum to 4.26 s"), line  # (the syncs beside the writers are not added again)


def test_size_zero_refused():
    r = CliRunner().invoke(cli, ["bench", "convert", "--size", "0"])
    assert r.exit_code == 1 and "--size" in r.stderr, r.output


@pytest.mark.slow
def test_tiny_import_from_anywhere(tmp_path, monkeypatch):
    """From an unrelated folder: nothing written there or in the repo's results, the cache in the
    temporary folder, the CSV and the plot where asked, settling shown, the phase breakdown."""
    import tempfile

    results = REPO / "benchmarks" / "results" / "convert.csv"
    before = results.stat().st_mtime_ns if results.exists() else None
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    r = CliRunner().invoke(cli, ["bench", "convert", "--size", "20MB", "--reps", "1", "--settle", "0.2", "--to", "nanotron",
                                 "--from", "hf", "--plot", "b.png", "--json", "b.json"])
    assert r.exit_code == 0, (r.output, r.stderr)
    assert sorted(p.name for p in cwd.iterdir()) == ["b.json", "b.png"]
    assert (results.stat().st_mtime_ns if results.exists() else None) == before
    assert list(tmp.glob("nanokern-bench*/nt-*")), list(tmp.iterdir())
    assert "settling 0.2 s" in r.output and "no CSV row" in r.output
    assert "where the time goes" in r.output and "read+kernel" in r.output
    assert json.loads((cwd / "b.json").read_text())["phases"]
    r = CliRunner().invoke(cli, ["bench", "convert", "--size", "20MB", "--reps", "1", "--settle", "0", "--no-check",
                                 "--csv", "rows.csv"])
    assert r.exit_code == 0, r.output
    assert "appended a row to " + str(cwd / "rows.csv") in r.output and (cwd / "rows.csv").is_file()


@pytest.mark.slow
def test_ctrl_c_removes_the_scratch_folder(tmp_path):
    cache, scratch = tmp_path / "cache", tmp_path / "scratch"
    seen = []  # whether the run's scratch folder existed when the signal was sent

    def settling(out: bytes) -> bool:
        if b"settling" in out:
            seen.append(any(scratch.iterdir()))
            return True
        return False

    code, err, _ = ctrl_c_once([str(REPO / ".venv" / "bin" / "nanokern"), "bench", "convert", "--size", "20MB", "--reps", "1",
                                "--settle", "60", "--cache-dir", str(cache), "--scratch-dir", str(scratch)], settling, wait=240)
    assert seen and seen[-1]
    assert code == 130, err
    assert not any(scratch.iterdir()), list(scratch.iterdir())
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "bench" in lines[0] and "removed" in lines[0], err


def test_convert_reports_its_phases_only_when_asked(tmp_path):
    """NANOKERN_PHASES names a file: the command writes its phases there; unset: no hook is on."""
    from fixtures_path import fixture

    from nanokern.execute import phases

    assert phases.ACTIVE is None and "NANOKERN_PHASES" not in os.environ
    out = tmp_path / "phases.json"
    t0 = time.monotonic()
    r = subprocess.run([str(REPO / ".venv" / "bin" / "nanokern"), "convert", str(fixture("nanotron", "tp2_pp2")),
                        str(tmp_path / "o"), "--to", "nanotron", "-q"], env={**os.environ, "NANOKERN_PHASES": str(out)},
                       capture_output=True, text=True)
    t1 = time.monotonic()
    assert r.returncode == 0, r.stderr
    p = json.loads(out.read_text())
    assert {"plan", "prepare", "writing", "kernel", "write", "sync", "finish", "rename"} <= set(p["seconds"])
    assert t0 < p["marks"]["plan"] < p["marks"]["writing"] < p["marks"]["rename"] < p["marks"]["end"] < t1
    assert p["seconds"]["kernel"] > 0
