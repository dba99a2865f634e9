"""Nothing a user keeps beside or inside an output is removed, truncated or followed: names that
look like nanokern's (`OUT.old-1`, `OUT.lock`, `OUT.replacing`, `OUT.partial-<hex>`) prove
nothing; only what nanokern provably wrote is touched. Each test snapshots the user's files
(symlinks as links, never followed) before and after, and finds them unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures_path import fixture
from helpers import run_cli, tree_bytes


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every path under roots, not following symlinks: (kind, bytes or link target)."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for n in dirnames + filenames:
                p = Path(dirpath) / n
                if p.is_symlink():
                    out[str(p)] = ("link", os.readlink(p))
                elif p.is_dir():
                    out[str(p)] = ("dir",)
                else:
                    out[str(p)] = ("file", p.read_bytes())
    return out


def one_error_line(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def ck():
    return fixture("nanotron", "tp2_pp2")


def _backups(where: Path, name: str) -> Path:
    """What users keep beside an output: backups named as nanokern once named its own folders."""
    users = where / "users"
    users.mkdir()
    for d in (f"{name}.old-1", f"{name}.old-2023", f"{name}.partial-0123456789abcdef", f"{name}.partial-live-0123456789ab"):
        (where / d).mkdir()
        (where / d / "w").write_text("bak")
    (where / f"{name}.old-7").write_text("note")
    return users


@pytest.mark.parametrize("to", ["hf", "nanotron"])
def test_backups_beside_out_are_kept(ck, tmp_path, to):
    _backups(tmp_path, "model")
    before = snapshot(tmp_path)
    args = ["convert", ck, tmp_path / "model", "-q"] + (["--to", "nanotron"] if to == "nanotron" else [])
    assert run_cli(*args).returncode == 0
    assert run_cli(*args, "--force").returncode == 0
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["model", "users", "model.old-1", "model.old-2023", "model.old-7", "model.partial-0123456789abcdef",
         "model.partial-live-0123456789ab"])


@pytest.mark.parametrize("name", ["out.lock", "out.replacing"])
def test_a_users_file_at_a_name_nanokern_needs(ck, tmp_path, name):
    """out.lock: refused, naming it. out.replacing: only needed to replace an existing OUT."""
    (tmp_path / name).write_text("notes")
    out = tmp_path / "out"
    r = run_cli("convert", ck, out, "-q")
    if name == "out.lock":
        line = one_error_line(r)
        assert str(tmp_path / name) in line and "not written by nanokern" in line and not out.exists()
    else:
        assert r.returncode == 0, r.stderr
        line = one_error_line(run_cli("convert", ck, out, "-q", "--force"))
        assert str(tmp_path / name) in line and "move it away" in line
    assert (tmp_path / name).read_text() == "notes"
    assert not list(tmp_path.glob("out.partial-*"))


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_lock_name_that_is_no_file_is_never_followed(ck, tmp_path, kind):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = tmp_path / "out.lock"
    os.symlink(victim, lock) if kind == "symlink" else os.mkfifo(lock)
    line = one_error_line(run_cli("convert", ck, tmp_path / "out", "-q", timeout=60))
    assert str(lock) in line
    assert victim.read_text() == "precious" and (lock.is_symlink() if kind == "symlink" else lock.exists())


def test_a_lock_left_by_a_killed_run_is_taken_over(ck, tmp_path):
    lock = tmp_path / "out.lock"
    lock.write_text("pid 999999 on somehost since 2026-01-01 00:00:00\n")  # its holder is gone: no flock
    r = run_cli("convert", ck, tmp_path / "out", "-q")
    assert r.returncode == 0, r.stderr
    assert not lock.exists()


def test_a_held_lock_refuses_and_stays(ck, tmp_path):
    from nanokern.execute import lock

    with lock.hold(tmp_path / "out") as path:
        content = path.read_bytes()
        line = one_error_line(run_cli("convert", ck, tmp_path / "out", "-q"))
        assert f"pid {os.getpid()} on " in line and path.read_bytes() == content
    assert not path.exists()


def test_force_refuses_an_export_holding_the_users_files(ck, tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", ck, out, "-q").returncode == 0
    (out / "eval_results").mkdir()
    (out / "eval_results" / "mmlu.json").write_text("0.73")
    (out / "NOTES.md").write_text("good run")
    (out / "empty_dir").mkdir()
    before = snapshot(out)
    line = one_error_line(run_cli("convert", ck, out, "-q", "--force", "--dtype", "keep"))
    assert "3 file(s) nanokern did not write" in line and "eval_results/" in line and "NOTES.md" in line, line
    assert snapshot(out) == before and not list(tmp_path.glob("out.*"))
    for p in ("eval_results/mmlu.json", "NOTES.md"):  # moved out: replaced
        (out / p).unlink()
    (out / "eval_results").rmdir()
    (out / "empty_dir").rmdir()
    assert run_cli("convert", ck, out, "-q", "--force", "--dtype", "keep").returncode == 0


def test_force_never_follows_a_symlink_inside_the_export(ck, tmp_path):
    out = tmp_path / "out"
    assert run_cli("convert", ck, out, "-q").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "config.json").write_text("theirs")
    (out / "config.json").unlink()
    os.symlink(elsewhere / "config.json", out / "config.json")  # a listed name, but a link
    line = one_error_line(run_cli("convert", ck, out, "-q", "--force"))
    assert "config.json" in line
    assert (elsewhere / "config.json").read_text() == "theirs"


def test_remove_owned_removes_exactly_what_the_manifest_lists(ck, tmp_path):
    from nanokern.execute.owned import foreign, remove_owned

    out = tmp_path / "out"
    assert run_cli("convert", ck, out, "-q", "--to", "nanotron", "--tp", "2", "--pp", "2").returncode == 0
    listed = json.loads((out / "nanokern-manifest.json").read_text())["written"]
    assert len(listed) == len([p for p in out.rglob("*") if p.is_file()]) - 1  # all but the manifest
    step = next(p for p in out.iterdir() if p.is_dir())
    (step / "eval.json").write_text("{}")  # the user's, inside a folder nanokern made
    (out / "empty").mkdir()
    theirs = sorted([f"{step.name}/eval.json", "empty/"])
    assert foreign(out) == theirs
    assert remove_owned(out) == theirs
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == sorted(["empty", step.name, f"{step.name}/eval.json"])
    assert (step / "eval.json").read_text() == "{}"


def test_remove_owned_cut_short_is_finished_by_the_next_one(ck, tmp_path):
    from nanokern.execute import owned
    from nanokern.execute.replace import made_by_nanokern

    out = tmp_path / "out"
    assert run_cli("convert", ck, out, "-q").returncode == 0
    os.rename(out / "nanokern-manifest.json", out / owned._REMOVING)  # killed right after the first step
    (out / "model.safetensors").unlink()
    assert not made_by_nanokern(out)  # no complete output any more
    assert owned.remove_owned(out) == [] and not out.exists()


def test_stale_partials_are_removed_only_with_nanokern_s_marker(ck, tmp_path):
    from nanokern.execute.manifest import make_work

    ours = tmp_path / "out.partial-live-00112233aabb"  # what a killed live.save_hf leaves
    make_work(ours)
    (ours / "model.safetensors").write_bytes(b"x" * 100)
    forged = tmp_path / "out.partial-00112233aabbccdd"  # the user's, holding a marker of another folder
    make_work(tmp_path / "elsewhere")
    forged.mkdir()
    os.rename(tmp_path / "elsewhere" / ".nanokern-partial", forged / ".nanokern-partial")
    before = snapshot(forged)
    assert run_cli("convert", ck, tmp_path / "out", "-q").returncode == 0
    assert not ours.exists() and snapshot(forged) == before


def test_a_users_folder_at_the_partial_name_is_refused(ck, tmp_path):
    from nanokern.convert import make_plan
    from nanokern.execute import execute, partial_dir, plan_fingerprint

    plan = make_plan(ck, "hf", None)
    work = partial_dir(tmp_path / "out", plan_fingerprint(plan))
    work.mkdir()
    (work / "mine").write_text("x")
    with pytest.raises(Exception, match="not made by nanokern") as e:
        execute(plan, tmp_path / "out", progress=False)
    assert str(work) in str(e.value) and (work / "mine").read_text() == "x" and not (tmp_path / "out").exists()


KILL_AFTER_SWAP = r"""
import os, sys
import nanokern.execute.replace as ex
from nanokern.convert import convert
real = ex.exchange
def exchange(a, b):
    done = real(a, b)
    os._exit(9)
ex.exchange = exchange
convert(sys.argv[1], sys.argv[2], force=True, progress=False, dtype="keep")
"""


@pytest.mark.slow
def test_force_killed_after_the_swap_removes_only_the_old_output(ck, tmp_path):
    """The old output, now at the partial folder's name, is removed by the next run: what its
    manifest lists, and a file the user dropped into it meanwhile stays."""
    out = tmp_path / "out"
    assert run_cli("convert", ck, out, "-q").returncode == 0
    r = subprocess.run([sys.executable, "-c", KILL_AFTER_SWAP, str(ck), str(out)], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    (old,) = tmp_path.glob("out.partial-*")
    (old / "late.txt").write_text("written during the run")
    want = tree_bytes(out)
    assert run_cli("convert", ck, tmp_path / "other", "-q").returncode == 0  # (another output: not touched)
    assert run_cli("convert", ck, out, "-q", "--force", "--dtype", "fp32").returncode == 0  # recovers first
    assert tree_bytes(out) != want and run_cli("verify", out).returncode == 0
    assert sorted(p.name for p in tmp_path.glob("out.*")) == [old.name] and os.listdir(old) == ["late.txt"]


def test_a_marker_left_inside_a_finished_output_is_removed_by_whoever_finds_it(ck, tmp_path):
    """A kill right after the rename into place leaves the partial folder's marker inside OUT:
    the next run for OUT removes it, and so does a watch that finds the export finished."""
    from nanokern.execute.manifest import MARKER
    from nanokern.execute.replace import settle

    out = tmp_path / "out"
    assert run_cli("convert", ck, out, "-q").returncode == 0
    want = tree_bytes(out)
    marker = json.dumps({"format": "nanokern-partial", "folder": "out.partial-00112233aabbccdd", "token": "ab"})
    (out / MARKER).write_text(marker)
    settle(out)
    assert tree_bytes(out) == want
    (out / MARKER).write_text(marker)
    assert run_cli("convert", ck, tmp_path / "out", "-q", "--force").returncode == 0
    assert MARKER not in tree_bytes(out)
