"""Messages and options: the free-space line, one size formatter, sizes and worker counts that
make no sense refused by the options, one way to leave after a signal, and no import circles
inside the Nanotron reader or the bench."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from nanokern.cli import cli

PKG = Path(__file__).resolve().parents[1] / "nanokern"


def test_not_enough_space_is_out_of_space_naming_the_output(tmp_path, monkeypatch):
    from nanokern.errors import OutOfSpace
    from nanokern.execute import diskspace

    monkeypatch.setattr(diskspace, "free_bytes", lambda path: 700)
    dst = tmp_path / "700"  # a watch's output is named by its step: the number must not be mistaken for a size
    with pytest.raises(OutOfSpace) as e:
        diskspace.check_fits(dst, [700_000])
    line = str(e.value)
    assert line.startswith(f"{dst}: not enough free space: needs "), line
    assert "700 B free on /" in line and "\n" not in line, line


def test_one_size_formatter():
    from nanokern.formats.nanotron import steps
    from nanokern.io.units import human_bytes

    assert not hasattr(steps, "size_text")
    st = steps.Step("5", 5, Path("/nowhere"), bytes=420_000, files=3)
    line = steps.describe([st], {"5": steps.Verdict(True)})[0]
    assert human_bytes(420_000) == "420 kB" and "420 kB" in line, line


@pytest.mark.parametrize("text, value", [("5GB", 5 * 10**9), ("60KB", 60_000), ("20kB", 20_000), ("512MiB", 2**29),
                                         ("1000", 1000), (7, 7)])
def test_parse_size(text, value):
    from nanokern.io.units import parse_size

    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["-5GB", "1e9", "GB", "5 parsecs", "-1", "nan"])
def test_parse_size_refuses(text):
    from nanokern.io.units import parse_size

    with pytest.raises(ValueError, match="size"):
        parse_size(text)


@pytest.mark.parametrize("args, option", [
    (["convert", "SRC", "DST", "--max-shard-size", "0"], "--max-shard-size"),
    (["convert", "SRC", "DST", "--max-shard-size", "-5GB"], "--max-shard-size"),
    (["convert", "SRC", "DST", "--workers", "-1"], "--workers"),
    (["convert", "SRC", "DST", "--workers", "0"], "--workers"),
    (["watch", "SRC", "DST", "--once", "--max-shard-size", "0"], "--max-shard-size"),
    (["watch", "SRC", "DST", "--once", "--workers", "-1"], "--workers"),
    (["bench", "convert", "--workers", "-1"], "--workers"),
    (["bench", "backends", "--size", "-1GB"], "--size"),
])
def test_nonsense_options_refused_in_one_line(tmp_path, args, option):
    args = [str(tmp_path / a) if a in ("SRC", "DST") else a for a in args]
    r = CliRunner().invoke(cli, args)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], r.output
    assert not (tmp_path / "DST").exists()


def test_leave_after_a_signal_flushes_and_says_one_line():
    code = "from nanokern.execute import signals; print('so far', end=''); signals.leave(15, 'stopped here')"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout, r.stderr) == (143, "so far", "stopped here\n")


def _imports(unit: str) -> dict[str, set[str]]:
    """{module: the modules of the same sub-package it imports} (module level and lazy), from the source."""
    folder = PKG / unit.split(".", 1)[1].replace(".", "/")
    graph = {}
    for f in folder.glob("*.py"):
        mod = f"{unit}.{f.stem}"
        got = set()
        for n in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""] if isinstance(n, ast.ImportFrom) else []
            got |= {x for x in names if x.startswith(unit + ".")}
        graph[mod] = got
    return graph


@pytest.mark.parametrize("unit", ["nanokern.formats.nanotron", "nanokern.bench"])
def test_no_import_circle(unit):
    graph = _imports(unit)

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for m in graph.get(todo.pop(), ()):
                if m not in seen:
                    seen.add(m)
                    todo.append(m)
        return seen

    circles = sorted(m for m in graph if m in reach(m))
    assert circles == [], f"modules on an import circle: {circles}"
