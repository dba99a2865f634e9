"""--once with --every and --keep-last (removing only exports the watch made), --latest-only,
kill -9 at any moment and the same command again, and --status."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from fixtures_path import fixture
from helpers import run_cli, tree_bytes
from test_watch_trainer import copy_step, of, reference, same_export, start_watch

SRC = "tp1_pp1"


def steps(ck, names):
    src = fixture("nanotron", SRC) / "0"
    for n in names:
        copy_step(src, ck, n)
    return src


def test_once_every_keep_last_removes_only_its_own(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    src = steps(ck, ["10", "20", "30", "40"])
    mine = reference(src, out / "5")  # an export the watch did not make, in OUT_ROOT, under a step's name
    (out / "notes").mkdir()
    before_ck, before_5 = tree_bytes(ck), tree_bytes(mine)
    r = run_cli("watch", ck, out, "--once", "--every", "20", "--keep-last", "1", "-q")
    assert r.returncode == 0, r.stderr
    assert [e["step"] for e in of(out, "exported")] == [20, 40]  # oldest first, divisible by 20
    assert [e["step"] for e in of(out, "removed")] == [20]
    assert not (out / "20").exists() and (out / "40").is_dir() and os.readlink(out / "latest") == "40"
    copy_step(src, ck, "60")
    before_ck = tree_bytes(ck)
    r = run_cli("watch", ck, out, "--once", "--every", "20", "--keep-last", "1", "-q")  # a later run, same log
    assert r.returncode == 0, r.stderr
    assert [e["step"] for e in of(out, "removed")] == [20, 40] and os.readlink(out / "latest") == "60"
    assert tree_bytes(ck) == before_ck  # no source touched
    assert tree_bytes(out / "5") == before_5 and (out / "notes").is_dir()  # nor what the watch did not make
    same_export(out / "60", reference(src, tmp_path / "ref"))
    assert sorted(p.name for p in out.iterdir()) == ["5", "60", "latest", "nanokern-watch.jsonl", "notes"]  # (lock released)
    s = run_cli("watch", "--status", out)
    assert s.returncode == 0, s.stderr
    rows = {w[0]: w[1] for w in map(str.split, s.stdout.splitlines()[1:]) if w[0].isdigit() and w[1] != "step(s):"}
    assert rows == {"20": "removed", "40": "removed", "60": "exported"}, s.stdout
    assert (out / "nanokern-watch.png").read_bytes()[:4] == b"\x89PNG"


def test_once_fails_with_a_damaged_step_and_latest_only_skips_behind(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    steps(ck, ["10", "20", "30"])
    f = next((ck / "30" / "model").rglob("*.safetensors"))
    with open(f, "r+b") as fh:
        fh.truncate(100)
    r = run_cli("watch", ck, out, "--once", "--latest-only", "-q")
    assert r.returncode == 1, r.stderr  # step 30 failed
    assert [e["step"] for e in of(out, "exported")] == [20]  # the newest complete one, not 10
    assert f.name in of(out, "failed", "30")[0]["error"]
    r = run_cli("watch", ck, out, "--once", "--latest-only", "-q")  # the same bytes: not tried again, 10 is behind
    assert r.returncode == 0, r.stderr
    assert [e["step"] for e in of(out, "exported")] == [20] and len(of(out, "failed", "30")) == 1
    f.write_bytes((fixture("nanotron", SRC) / "0" / f.relative_to(ck / "30")).read_bytes())  # repaired: new bytes
    r = run_cli("watch", ck, out, "--once", "--latest-only", "-q")
    assert r.returncode == 0, r.stderr
    assert [e["step"] for e in of(out, "exported")] == [20, 30] and os.readlink(out / "latest") == "30"


@pytest.mark.slow
def test_kill_9_at_any_moment_then_the_same_command(tmp_path):
    """Killed again and again while it works, the same command ends with every step exported
    exactly once, equal to convert's, and nothing else left in OUT_ROOT."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    src = steps(ck, ["1", "2", "3", "4"])
    args = [ck, out, "--poll", "0.05", "--max-shard-size", "20KB", "-q"]
    cut = []  # what each kill left: an export started and not recorded, partial folders
    for delay in (0.4, 0.6, 0.8, 1.0, 1.2, 1.4):
        w = start_watch(*args)
        time.sleep(delay)
        w.send_signal(signal.SIGKILL)
        w.wait()
        open_ = [e["step"] for e in of(out, "started") if not of(out, "exported", e["step"]) and not of(out, "failed", e["step"])]
        cut.append((delay, open_, sorted(p.name for p in out.glob("*.partial-*"))))
    print(cut)
    r = run_cli("watch", *args[:2], "--once", *args[2:])
    assert r.returncode == 0, r.stderr
    for n in ("1", "2", "3", "4"):
        assert len(of(out, "exported", n)) == 1, (n, of(out, "exported", n))
    same_export(out / "4", reference(src, tmp_path / "ref", "--max-shard-size", "20KB"))
    for n in ("1", "2", "3"):
        assert tree_bytes(out / n).keys() == tree_bytes(out / "4").keys()
    assert not [p.name for p in out.iterdir() if "partial" in p.name or p.name.endswith(".lock") and p.name[0].isdigit()]
    assert os.readlink(out / "latest") == "4"


def test_finished_export_not_yet_recorded_is_kept_not_redone(tmp_path):
    """A kill between the export's rename and its `exported` record: the restart finds the
    folder, records it (recovered) and exports nothing again."""
    from nanokern.formats.nanotron import steps as S

    ck, out = tmp_path / "ck", tmp_path / "hf"
    src = steps(ck, ["10"])
    reference(src, out / "10")
    sig = S.observe(S.Step("10", 10, ck / "10")).source  # what the watch records: the signature of what an export reads
    (out / "nanokern-watch.jsonl").write_text(json.dumps({"time": "", "step": 10, "event": "started", "out": str(out / "10"),
                                                          "seconds": None, "bytes": None, "signature": sig}) + "\n")
    ino = (out / "10").stat().st_ino
    r = run_cli("watch", ck, out, "--once", "-q")
    assert r.returncode == 0, r.stderr
    (rec,) = of(out, "exported", "10")
    assert rec.get("recovered") is True and (out / "10").stat().st_ino == ino
    assert os.readlink(out / "latest") == "10"


def test_a_lock_left_by_a_kill_after_the_rename_is_removed_one_still_held_is_not(tmp_path):
    """A kill between an export's rename and its lock's release leaves `<step>.lock` beside a
    finished export: the next watch removes it; a `<step>.lock` some process holds stays."""
    import fcntl

    ck, out = tmp_path / "ck", tmp_path / "hf"
    steps(ck, ["10", "20"])
    assert run_cli("watch", ck, out, "--once", "-q").returncode == 0
    (out / "10.lock").write_text("pid 1 on killed-node since 2026-12-01 10:00:00\n")  # nobody holds it
    held = os.open(out / "20.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (a convert of step 20 running by hand)
        r = run_cli("watch", ck, out, "--once", "-q")
        assert r.returncode == 0, r.stderr
        assert not (out / "10.lock").exists() and (out / "20.lock").exists()
    finally:
        os.close(held)
    assert len(of(out, "exported", "10")) == 1 and len(of(out, "exported", "20")) == 1


def test_idle_poll_is_one_listing(tmp_path, monkeypatch):
    """Once every step is exported, a poll lists CHECKPOINTS_PATH and walks no step folder."""
    from nanokern.formats.nanotron import steps as S
    from nanokern.watch.export import ExportOptions
    from nanokern.watch.watcher import Watcher, WatchOptions

    ck, out = tmp_path / "ck", tmp_path / "hf"
    steps(ck, ["10", "20"])
    assert run_cli("watch", ck, out, "--once", "-q").returncode == 0
    w = Watcher(WatchOptions(ck, out, ExportOptions(progress=False)), lambda m, err=False: None)
    w.setup()
    walked = []
    monkeypatch.setattr(S, "observe", lambda st: walked.append(st.name))
    d = w.sched.look()
    assert (d.ready, d.waiting, d.give_up, walked) == ([], [], [], [])
    copy_step(fixture("nanotron", SRC) / "0", ck, "30")
    w.sched.look()
    assert walked == ["30"]
