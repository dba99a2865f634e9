"""The world around a watch: a step deleted while it is exported, a truncated shard, a shard
short for a while, a full disk, OUT_ROOT inside CHECKPOINTS_PATH, two watches on one OUT_ROOT."""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
from fixtures_path import fixture
from test_watch_trainer import copy_step, of, reference, same_export, start_watch, wait_for

from test_robustness import small_fs  # noqa: F401 - the 256 KiB tmpfs fixture

from nanokern.watch.export import ExportOptions
from nanokern.watch.watcher import WatchOptions

SHARD = "model/model/lm_head/pp_block/model_weight_pp-rank-1-of-2_tp-rank-0-of-2.safetensors"


def run_once(ck, out, **kw) -> int:
    """The watch's loop in this process (--once), as the command runs it."""
    from nanokern.watch.loop import run

    lines = []
    rc = run(WatchOptions(ck, out, ExportOptions(progress=False), once=True, **kw), lambda m, err=False: lines.append(m))
    run_once.lines = lines
    return rc


def leftovers(out, step):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(step))


@pytest.mark.parametrize("when", ["before-reading", "after-reading"])
def test_step_deleted_while_exported(tmp_path, monkeypatch, when):
    """Nanotron's s3 mover removes step folders with rm -rf after its upload. Removed before its
    files were read: the export of that step ends cleanly (nothing at OUT_ROOT/<step>, a failed
    record). Removed after every file was read: the export is whole, now the only copy of those
    weights: kept and recorded (`source_gone`). The next step is exported either way."""
    import nanokern.execute.run as run_mod
    import nanokern.execute.write as write_mod

    src = fixture("nanotron", "tp2_pp2") / "0"
    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("10", "20"):
        copy_step(src, ck, step)
    real_write, real_replace = write_mod.write_file, run_mod.replace

    def write_file(f, target, *a, **k):  # the first file of step 10: its source is removed first
        if when == "before-reading" and "/10.partial-" in str(target):
            shutil.rmtree(ck / "10", ignore_errors=True)
        return real_write(f, target, *a, **k)

    def replace(work, dst):  # every byte read (memory-mapped), then the source removed, then the rename
        if when == "after-reading" and dst.name == "10":
            shutil.rmtree(ck / "10")
        return real_replace(work, dst)

    monkeypatch.setattr(write_mod, "write_file", write_file)
    monkeypatch.setattr(run_mod, "replace", replace)
    if when == "before-reading":
        assert run_once(ck, out) == 1
        assert leftovers(out, "10") == []
        (failed,) = of(out, "failed", "10")
        assert "deleted" in failed["error"], failed
        assert not of(out, "exported", "10")
    else:
        assert run_once(ck, out) == 0
        (rec,) = of(out, "exported", "10")
        assert rec["source_gone"] is True and not of(out, "failed", "10"), rec
        same_export(out / "10", reference(src, tmp_path / "ref10"))
    assert len(of(out, "exported", "20")) == 1
    same_export(out / "20", reference(src, tmp_path / "ref"))
    assert os.readlink(out / "latest") == "20"


@pytest.mark.slow
def test_truncated_shard_is_recorded_and_skipped_a_short_one_waited_for(tmp_path):
    """Step 10 has a shard short for a while (then written out): exported once complete. Step 20
    has one that stays truncated: a failed record naming it after --give-up, never exported."""
    src = fixture("nanotron", "tp2_pp2") / "0"
    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("10", "20"):
        copy_step(src, ck, step)
    whole = (src / SHARD).read_bytes()
    for step in ("10", "20"):
        with open(ck / step / SHARD, "r+b") as f:
            f.truncate(len(whole) - 100)
    watch = start_watch(ck, out, "--poll", "0.2", "--give-up", "5", "-q")
    try:
        time.sleep(2.0)  # ten polls: both steps look complete (model_config.json is there) but are not
        assert not of(out, "started")
        (ck / "10" / SHARD).write_bytes(whole)
        wait_for(lambda: of(out, "exported", "10"), 60, "step 10 exported", watch)
        wait_for(lambda: of(out, "failed", "20"), 60, "step 20 given up", watch)
    finally:
        watch.send_signal(signal.SIGINT)
        rc = watch.wait(timeout=30)
    err = watch.stderr.read()
    assert rc == 130, err
    assert err.strip().splitlines()[-1].startswith("interrupted (SIGINT)")
    (failed,) = of(out, "failed", "20")
    assert SHARD.rsplit("/", 1)[1] in failed["error"] and "truncated" in failed["error"], failed
    assert not of(out, "started", "20") and leftovers(out, "20") == []
    assert len(of(out, "exported", "10")) == 1 and not of(out, "failed", "10")
    same_export(out / "10", reference(src, tmp_path / "ref"))


def test_full_disk_stops_the_watch_with_converts_line(small_fs, tmp_path):
    ck = tmp_path / "ck"
    copy_step(fixture("nanotron", "tp2_pp2") / "0", ck, "10")
    out = small_fs / "hf"
    from helpers import run_cli

    r = run_cli("watch", ck, out, "--once", "--dtype", "float32", "-q")  # about 0.8 MB on a 256 KiB disk
    assert r.returncode == 1, r.stderr
    errs = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errs) == 1 and "not enough free space" in errs[0] and str(small_fs) in errs[0], r.stderr
    assert leftovers(out, "10") == []
    assert "not enough free space" in of(out, "failed", "10")[0]["error"]


@pytest.mark.parametrize("inside", ["out-in-ck", "ck-in-out", "same"])
def test_out_root_and_checkpoints_path_apart(tmp_path, inside):
    from helpers import run_cli

    ck = tmp_path / "ck"
    copy_step(fixture("nanotron", "tp1_pp1") / "0", ck, "10")
    out = {"out-in-ck": ck / "hf", "ck-in-out": tmp_path, "same": ck}[inside]
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    r = run_cli("watch", ck, out, "--once", "-q")
    assert r.returncode == 1
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1 and "CHECKPOINTS_PATH" in r.stderr
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before  # nothing written


def test_second_watch_refuses_naming_the_holder(tmp_path):
    from helpers import run_cli

    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(fixture("nanotron", "tp1_pp1") / "0", ck, "10")
    first = start_watch(ck, out, "--poll", "0.2", "-q")
    try:
        wait_for(lambda: of(out, "exported", "10"), 60, "the first watch's export", first)
        r = run_cli("watch", ck, out, "--once", "-q")
        assert r.returncode == 1
        assert f"another nanokern watch exports here: pid {first.pid} on " in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 143
    r = run_cli("watch", ck, out, "--once", "-q")  # the holder gone (its lock with it): runs
    assert r.returncode == 0, r.stderr
    assert len(of(out, "exported", "10")) == 1


def test_a_step_folder_is_not_a_checkpoints_path(tmp_path):
    from helpers import run_cli

    ck = tmp_path / "ck"
    copy_step(fixture("nanotron", "tp1_pp1") / "0", ck, "10")
    r = run_cli("watch", ck / "10", tmp_path / "hf", "-q", timeout=60)  # would otherwise wait for steps forever
    assert r.returncode == 1 and "is a step folder: watch its parent" in r.stderr and not (tmp_path / "hf").exists()
