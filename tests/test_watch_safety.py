"""What `nanokern watch` must never do to the user's data, and the small promises around it:
an export that may be the only copy of its weights is kept, a step saved again under the same
name is exported again (the old export kept aside), every started export ends with a record,
a `latest` or a symlinked step of the user's is left alone, --once fails on a failed command,
step folder names are kept as they are; --keep-last and the watch's lock touch only what
nanokern provably wrote."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess

from fixtures_path import fixture
from helpers import NANOKERN, run_cli, tree_bytes
from test_watch_trainer import copy_step, of, reference, same_export, start_watch, wait_for

from nanokern.watch.export import ExportOptions
from nanokern.watch.watcher import Watcher, WatchOptions

SRC, OTHER = "tp2_pp2", "tp2_pp1_tied"  # OTHER: other weights (tp1_pp1 is SRC's model resharded)


def src(name=SRC):
    return fixture("nanotron", name) / "0"


def run_once(ck, out, **kw) -> tuple[int, list[str]]:
    """The watch's loop in this process (--once): (exit code, the lines it said)."""
    from nanokern.watch.loop import run

    lines = []
    rc = run(WatchOptions(ck, out, ExportOptions(progress=False), once=True, **kw), lambda m, err=False: lines.append(m))
    return rc, lines


def drop(out, event, step):
    """Remove the log's `event` records of `step`: what a kill just before them leaves."""
    log = out / "nanokern-watch.jsonl"
    keep = [line for line in log.read_text().splitlines()
            if not (json.loads(line)["event"] == event and json.loads(line)["step"] == int(step))]
    log.write_text("".join(f"{line}\n" for line in keep))


# -- A: the only copy of a step is never deleted ---------------------------------------------------------

def test_a_finished_export_of_a_deleted_step_is_kept_and_recorded(tmp_path):
    """Killed between the export's rename and its record, the step then removed (s3
    remove_after_upload): the restart keeps the export, now the only copy, and records it."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("100", "200"):
        copy_step(src(), ck, step)
    assert run_once(ck, out)[0] == 0
    drop(out, "exported", "200")
    shutil.move(ck / "200", tmp_path / "moved-away")
    before = tree_bytes(out / "200")
    rc, lines = run_once(ck, out)
    assert rc == 0, lines
    assert tree_bytes(out / "200") == before and not of(out, "failed")
    (rec,) = of(out, "exported", "200")
    assert rec["recovered"] is True and rec["source_gone"] is True, rec
    assert any("step 200: found its finished export" in line and "only copy" in line for line in lines), lines


def test_a_marker_a_kill_left_inside_a_finished_export_goes_when_it_is_found(tmp_path):
    """Killed right after the rename into place: the partial folder's marker is inside the
    export; the restart that finds and records the export removes it."""
    from nanokern.execute.manifest import MARKER

    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "100")
    assert run_once(ck, out)[0] == 0
    want = tree_bytes(out / "100")
    drop(out, "exported", "100")
    (out / "100" / MARKER).write_text(json.dumps({"format": "nanokern-partial", "folder": "100.partial-0011223344556677",
                                                  "token": "ab"}))
    assert run_once(ck, out)[0] == 0
    assert tree_bytes(out / "100") == want and of(out, "exported", "100")[0]["recovered"] is True


def test_a_export_read_whole_then_its_step_deleted_is_kept_a_rewritten_one_is_not(tmp_path, monkeypatch):
    """execute returned (every file read): a step deleted meanwhile, even half-way through its
    rm -rf, leaves a valid export (kept, `source_gone`); a step one of whose files was
    rewritten meanwhile leaves a suspect one (removed, exported again from the new bytes)."""
    import nanokern.execute.run as run_mod

    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("100", "200"):
        copy_step(src(), ck, step)
    shard = next((ck / "200" / "model").rglob("*.safetensors")).relative_to(ck / "200")
    real = run_mod.replace

    def replace(work, dst):  # after every byte was read, before the rename
        if dst.name == "100":
            os.unlink(next((ck / "100" / "model").rglob("*.safetensors")))  # rm -rf under way
        if dst.name == "200" and not of(out, "failed", "200"):
            os.utime(ck / "200" / shard, ns=(1, 1))  # rewritten (same size, another time)
        return real(work, dst)

    monkeypatch.setattr(run_mod, "replace", replace)
    rc, lines = run_once(ck, out)
    assert rc == 1, lines  # step 200's first export failed
    (rec,) = of(out, "exported", "100")
    assert rec.get("source_gone") is True and not of(out, "failed", "100"), rec
    same_export(out / "100", reference(src(), tmp_path / "ref"))
    (failed,) = of(out, "failed", "200")
    assert "changed while it was exported" in failed["error"], failed
    assert len(of(out, "exported", "200")) == 1 and "source_gone" not in of(out, "exported", "200")[0]


# -- B: a step saved again after its export is exported again --------------------------------------------

def test_b_rewritten_step_is_exported_again_the_old_export_kept_aside(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "100")
    assert run_once(ck, out)[0] == 0
    old = tree_bytes(out / "100")
    (rec,) = of(out, "exported", "100")
    assert rec["checkpoints"] == str(ck.resolve()) and rec["signature"] == of(out, "started", "100")[0]["signature"]
    shutil.rmtree(ck / "100")
    copy_step(src(OTHER), ck, "100")  # a rollback and a new save: other weights, same step
    assert run_once(ck, out, every=7)[0] == 0  # a step these options do not export: left as it is
    assert not of(out, "superseded") and tree_bytes(out / "100") == old
    rc, lines = run_once(ck, out)
    assert rc == 0, lines
    (sup,) = of(out, "superseded", "100")
    assert sup["moved_to"] == str(out / "100.superseded-1") and "rewritten" in sup["reason"], sup
    assert tree_bytes(out / "100.superseded-1") == old
    same_export(out / "100", reference(src(OTHER), tmp_path / "ref"))
    assert len(of(out, "exported", "100")) == 2 and os.readlink(out / "latest") == "100"
    assert any("step 100: the step was rewritten" in line and "100.superseded-1" in line for line in lines), lines
    assert run_once(ck, out) == (0, ["watching " + f"{ck} -> {out} (--once)"])  # nothing more to do


def test_b_another_checkpoints_path_is_a_new_run(tmp_path):
    """A new run writing the same OUT_ROOT from another CHECKPOINTS_PATH: its steps are exported
    again, whatever their bytes (copytree keeps times: the same signature)."""
    ck, ck2, out = tmp_path / "ck", tmp_path / "ck2", tmp_path / "hf"
    copy_step(src(), ck, "100")
    assert run_once(ck, out)[0] == 0
    shutil.copytree(ck, ck2)
    rc, lines = run_once(ck2, out)
    assert rc == 0, lines
    (sup,) = of(out, "superseded", "100")
    assert f"CHECKPOINTS_PATH is {ck2}" in sup["reason"] and str(ck) in sup["reason"], sup
    assert (out / "100.superseded-1").is_dir() and of(out, "exported", "100")[-1]["checkpoints"] == str(ck2)


def test_b_a_running_watch_sees_a_step_saved_again(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "100")
    w = start_watch(ck, out, "--poll", "0.1", "-q")
    try:
        wait_for(lambda: of(out, "exported", "100"), 60, "step 100 exported", w)
        shutil.rmtree(ck / "100")
        copy_step(src(OTHER), ck, "100")
        wait_for(lambda: len(of(out, "exported", "100")) == 2, 60, "step 100 exported again", w)
    finally:
        w.send_signal(signal.SIGTERM)
        assert w.wait(timeout=30) == 143
    assert len(of(out, "superseded", "100")) == 1 and (out / "100.superseded-1").is_dir()
    same_export(out / "100", reference(src(OTHER), tmp_path / "ref"))


# -- C: the smaller promises -----------------------------------------------------------------------------

def test_c_once_fails_when_the_command_fails(tmp_path):
    ck = tmp_path / "ck"
    copy_step(src(), ck, "100")
    for i, (cmd, code) in enumerate([("exit 3", 3), ("no-such-command-nanokern", 127), ("true", 0)]):
        out = tmp_path / f"hf{i}"
        rc, lines = run_once(ck, out, exec_cmd=cmd)
        assert (rc, of(out, "exec", "100")[0]["returncode"]) == (1 if code else 0, code), lines


def _watcher(ck, out, **kw) -> tuple[Watcher, list[str]]:
    lines = []
    w = Watcher(WatchOptions(ck, out, ExportOptions(progress=False), poll=0.05, **kw), lambda m, err=False: lines.append(m))
    w.setup()
    return w, lines


def _next_export(w: Watcher) -> str:
    for _ in range(50):
        d = w.decide()
        if d["do"] == "export":
            return d["step"]
    raise AssertionError("no export decided")


def test_c_a_step_deleted_while_its_rm_still_runs_ends_with_a_failed_record(tmp_path):
    """The export fails while the step folder is still there (rm -rf under way): "trying
    again"; once the folder is gone, a failed record ends the export (not `exporting` forever).
    A restart finding an unfinished export of a step that is gone records it failed too."""
    from nanokern.watch import status

    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "100")
    w, lines = _watcher(ck, out)
    assert _next_export(w) == "100"
    w.export_failed("100", FileNotFoundError(2, "No such file or directory", str(ck / "100" / "model")))
    assert any("trying again" in line for line in lines), lines
    shutil.rmtree(ck / "100")
    w.decide()
    w.close()
    (failed,) = of(out, "failed", "100")
    assert "deleted while it was exported" in failed["error"], failed
    assert [r["state"] for r in status.rows(out)] == ["failed"]

    copy_step(src(), ck, "200")
    w, _ = _watcher(ck, out)
    assert _next_export(w) == "200"  # ... and killed here
    w.close()
    shutil.rmtree(ck / "200")
    rc, lines = run_once(ck, out)
    assert rc == 1 and "deleted before its export finished" in of(out, "failed", "200")[0]["error"], lines
    assert [r["state"] for r in status.rows(out)] == ["failed", "failed"]


def test_c_symlinked_step_is_skipped_in_one_line_and_never_touched(tmp_path):
    ck, out, elsewhere = tmp_path / "ck", tmp_path / "hf", tmp_path / "elsewhere"
    copy_step(src(), ck, "100")
    copy_step(src(), elsewhere, "200")
    (ck / "200").symlink_to(elsewhere / "200")
    before = tree_bytes(elsewhere)
    w, lines = _watcher(ck, out)
    assert _next_export(w) == "100"
    for _ in range(3):
        w.sched.look()
        w.decide()
    w.close()
    said = [line for line in lines if "200" in line]
    assert len(said) == 1 and "skipped" in said[0] and "symlink" in said[0], lines
    rc, lines = run_once(ck, out)
    assert rc == 0 and sum("step 200: skipped" in line for line in lines) == 1, lines
    assert not of(out, "started", "200") and not (out / "200").exists() and tree_bytes(elsewhere) == before
    r = run_cli("inspect", ck)
    assert r.returncode == 0 and "skipped: 200 (symlink" in r.stdout, r.stdout + r.stderr


def test_c_inspect_with_a_stale_latest_txt_shows_the_steps(tmp_path):
    ck = tmp_path / "ck"
    for step in ("100", "200"):
        copy_step(src(), ck, step)
    (ck / "latest.txt").write_text("300")  # step 300 was removed after its upload
    r = run_cli("inspect", ck)
    assert r.returncode == 0, r.stderr
    assert "latest.txt is stale: it names step 300" in r.stdout and "stale: no such step" in r.stdout, r.stdout
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("    ") and line.split()[0].isdigit()}
    assert set(rows) == {"100", "200"} and rows["200"].endswith("<- this one"), r.stdout


def test_c_a_latest_of_the_users_is_never_removed_nor_replaced(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "100")
    out.mkdir()
    (out / "mine").mkdir()
    (out / "latest").symlink_to("mine")
    r = run_cli("watch", ck, out, "--once", "-q")
    assert r.returncode == 1 and os.readlink(out / "latest") == "mine", r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {out / 'latest'}: a symlink the watch did not make"), err
    assert not (out / "100").exists() and not (out / "nanokern-watch.lock").exists()  # (a refused start: released)


def test_c_status_into_a_closed_pipe_exits_quietly(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "100")
    assert run_once(ck, out)[0] == 0
    r, w = os.pipe()
    os.close(r)  # the reader is gone before the first line (as `| head -1` once it has its line)
    try:
        p = subprocess.run([*NANOKERN, "watch", "--status", str(out)], stdout=w, stderr=subprocess.PIPE, text=True)
    finally:
        os.close(w)
    assert (p.returncode, p.stderr) == (0, "")


def test_c_once_says_one_line_per_incomplete_step(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "100")
    (ck / "100" / "model_config.json").unlink()  # still being written
    rc, lines = run_once(ck, out)
    assert rc == 0 and [line for line in lines if "100" in line] == [
        "step 100: not complete now (" + lines[-1].split("(", 1)[1]], lines
    assert "left for a later run" in lines[-1]


def test_c_a_zero_padded_step_keeps_its_name(tmp_path):
    """Folder `00050` is exported to OUT_ROOT/00050 and logged by that name (and as step 50);
    --keep-last, --status, `latest` and a restart go by the name."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("00050", "00100", "00150"):
        copy_step(src(), ck, step)
    rc, lines = run_once(ck, out, keep_last=1)
    assert rc == 0, lines
    assert [(r["step"], r["name"]) for r in of(out, "exported")] == [(50, "00050"), (100, "00100"), (150, "00150")]
    assert [r["name"] for r in of(out, "removed")] == ["00050", "00100"]
    assert sorted(p.name for p in out.iterdir() if p.name[0].isdigit()) == ["00150"]
    assert os.readlink(out / "latest") == "00150"
    assert run_once(ck, out, keep_last=1)[0] == 0 and len(of(out, "exported")) == 3  # nothing exported again
    s = run_cli("watch", "--status", out)
    rows = {w[0]: w[1] for w in map(str.split, s.stdout.splitlines()[1:-2])}
    assert rows == {"00050": "removed", "00100": "removed", "00150": "exported"}, s.stdout


def test_c_exec_quoting_out_is_warned_about(tmp_path):
    ck = tmp_path / "ck"
    copy_step(src(), ck, "100")
    warned = []
    for i, cmd in enumerate(['echo "at {out}"', "echo '{out}'", "echo {out} \"$NANOKERN_OUT\""]):
        rc, lines = run_once(ck, tmp_path / f"hf{i}", exec_cmd=cmd)
        assert rc == 0, lines
        warned.append(sum(line.startswith("warning: --exec writes {out} inside quotes") for line in lines))
    assert warned == [1, 1, 0]
    h = run_cli("watch", "--help")
    assert "write {out} bare" in h.stdout and "$NANOKERN_OUT" in h.stdout


# -- D: --keep-last and the watch's lock touch only what nanokern wrote ------------------------------------

def test_d_keep_last_leaves_the_users_files_in_an_old_export(tmp_path):
    """An old export holding a file of the user's (an eval result): nanokern's files are removed
    (manifest first), the user's stay in the folder, and the log says which. One holding only
    nanokern's files (the parity report counts as the watch's) goes whole."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("10", "20"):
        copy_step(src(), ck, step)
    assert run_once(ck, out)[0] == 0
    (out / "10" / "eval").mkdir()
    (out / "10" / "eval" / "results.json").write_text("{}")
    (out / "20" / "nanokern-parity.json").write_text("{}")
    copy_step(src(), ck, "30")
    rc, lines = run_once(ck, out, keep_last=1)
    assert rc == 0, lines
    assert tree_bytes(out / "10") == {"eval/results.json": b"{}"}
    assert not (out / "20").exists() and not list(out.glob(".nanokern-removing-*"))
    assert [(r["name"], r.get("kept")) for r in of(out, "removed")] == [("10", ["eval/"]), ("20", None)]
    assert any("step 10: removed its export" in line and "eval/" in line for line in lines), lines


def test_d_a_removal_cut_short_is_finished_only_where_the_manifest_proves_it(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "10")
    reference(src(), out / ".nanokern-removing-7")  # a kill while removing an export: its manifest is there
    (out / ".nanokern-removing-7" / "notes.txt").write_text("mine")
    (out / ".nanokern-removing-8").mkdir()  # no manifest: nothing proves what is nanokern's
    (out / ".nanokern-removing-8" / "model.safetensors").write_text("mine too")
    assert run_once(ck, out)[0] == 0
    assert tree_bytes(out / ".nanokern-removing-7") == {"notes.txt": b"mine"}
    assert tree_bytes(out / ".nanokern-removing-8") == {"model.safetensors": b"mine too"}


def test_d_the_watch_lock_never_takes_a_users_file_and_goes_with_the_watch(tmp_path):
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "10")
    out.mkdir()
    (out / "nanokern-watch.lock").write_text("my notes\n")
    (out / "99.lock").write_text("my other notes\n")
    r = run_cli("watch", ck, out, "--once", "-q")
    assert r.returncode == 1 and (out / "nanokern-watch.lock").read_text() == "my notes\n", r.stderr
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "nanokern-watch.lock" in err[0], err
    (out / "nanokern-watch.lock").unlink()
    r = run_cli("watch", ck, out, "--once", "-q")
    assert r.returncode == 0, r.stderr
    assert (out / "99.lock").read_text() == "my other notes\n"  # not a lock nanokern wrote: left alone
    assert not (out / "nanokern-watch.lock").exists() and len(of(out, "exported", "10")) == 1


def test_d_a_log_name_that_is_no_file_is_never_followed(tmp_path):
    """A symlink where the watch keeps its log: one error line naming it, the target unchanged."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    copy_step(src(), ck, "10")
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, out / "nanokern-watch.jsonl")
    r = run_cli("watch", ck, out, "--once", "-q")
    err = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(err) == 1 and err[0].startswith("error: ") and "nanokern-watch.jsonl" in err[0], r.stderr
    assert victim.read_text() == "precious\n" and (out / "nanokern-watch.jsonl").is_symlink()


def test_d_out_of_space_is_known_by_its_type_not_by_its_text():
    import errno

    from nanokern.errors import NanokernError, OutOfSpace
    from nanokern.watch.export import out_of_space

    assert out_of_space(OutOfSpace("not enough free space: needs 1 GB, 1 MB free on /", "/out"))
    assert out_of_space(OSError(errno.ENOSPC, "No space left on device", "/out/x"))
    assert not out_of_space(NanokernError("truncated", "/runs/not enough free space/10/model/x.safetensors"))
    assert not out_of_space(NanokernError("rank 1 failed: /data/no space left on the device/x: unreadable"))


def test_c_an_export_cut_short_then_skipped_by_the_options_ends_with_a_record(tmp_path):
    """Started, killed before it finished, and the watch restarted with options that skip the
    step (--every, --latest-only with a newer step ready): a failed record ends it."""
    ck, out = tmp_path / "ck", tmp_path / "hf"
    for step in ("10", "15", "20"):
        copy_step(src(), ck, step)
    from nanokern.watch import status

    for step, kw in (("15", {"every": 20}), ("10", {"latest_only": True})):
        w, _ = _watcher(ck, out, every=int(step))
        assert _next_export(w) == step  # ... and killed here
        w.close()
        rc, lines = run_once(ck, out, **kw)
        (failed,) = of(out, "failed", step)
        assert rc == 1 and ("--every 20 skips it" if step == "15" else "a newer step is ready") in failed["error"], lines
    assert [(r["step"], r["state"]) for r in status.rows(out)] == [("10", "failed"), ("15", "failed"), ("20", "exported")]
