"""What a user meets around a conversion: two runs for one OUT, --force replaced under a kill,
a disk too small, Ctrl-C / SIGTERM and resuming, torch's dtype names, a quick --help."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures_path import fixture
from helpers import NANOKERN, journaled, run_cli, tree_bytes
from nt_reference import random_hf, write_nanotron


def leftovers(dst: Path) -> list[str]:
    return sorted(p.name for p in dst.parent.glob(f"{dst.name}.*"))


def one_error_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in stderr, stderr
    return lines[0]


# --- one conversion per OUT ---------------------------------------------------------------------

@pytest.mark.slow
def test_two_conversions_raced_for_one_out(tmp_path):
    """Started together, again and again: every run that exits 0 leaves OUT complete and equal to
    a clean run; a run that does not succeed refuses with one line (the holder, or OUT exists)."""
    src = fixture("nanotron", "tp2_pp2")
    clean = tmp_path / "clean"
    assert run_cli("convert", src, clean, "-q").returncode == 0
    want = tree_bytes(clean)
    dst = tmp_path / "out"
    refusals = 0
    for i in range(8):
        force = ["--force"] if i % 2 else []  # odd tries replace the previous try's OUT
        if not force:
            shutil.rmtree(dst, ignore_errors=True)
        procs = [subprocess.Popen([*NANOKERN, "convert", str(src), str(dst), "-q", *force], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.wait(), p.stdout.read(), p.stderr.read()) for p in procs]
        assert any(rc == 0 for rc, _, _ in results), results
        for rc, out, err in results:
            if rc == 0:
                assert f"wrote {dst}" in out
            else:
                refusals += 1
                line = one_error_line(err)
                assert rc == 1 and str(dst) in line and ("in use by pid" in line or "output exists" in line), line
        assert tree_bytes(dst) == want, f"try {i}: OUT differs from a clean run"
        assert leftovers(dst) == [], leftovers(dst)
    assert refusals >= 4  # the runs really overlapped
    assert run_cli("verify", dst).returncode == 0


@pytest.mark.slow
def test_lock_holder_is_named_and_wait_waits(tmp_path):
    from nanokern.execute import lock

    src = fixture("nanotron", "tp2_pp2")
    dst = tmp_path / "out"
    with lock.hold(dst):
        t0 = time.monotonic()
        r = run_cli("convert", src, dst, "-q")
        line = one_error_line(r.stderr)
        assert r.returncode == 1 and f"pid {os.getpid()} on " in line and "--wait" in line
        assert time.monotonic() - t0 < 10 and not dst.exists()
        waiter = subprocess.Popen([*NANOKERN, "convert", str(src), str(dst), "-q", "--wait"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting for us
    assert waiter.wait(timeout=120) == 0, waiter.stderr.read()
    assert "waiting for pid" in waiter.stderr.read()
    assert run_cli("verify", dst).returncode == 0 and leftovers(dst) == []


# --- --force killed at any point ------------------------------------------------------------------

KILL_SCRIPT = r"""
import os, sys
import nanokern.execute.replace as ex
from nanokern.convert import convert
where = sys.argv[3]
real_exchange, real_replace = ex.exchange, os.replace
def exchange(a, b):
    if where == "before-swap":
        os._exit(9)
    if where.startswith("rename"):
        return False
    done = real_exchange(a, b)
    if where == "after-swap":
        os._exit(9)
    return done
calls = []
def replace(a, b):
    real_replace(a, b)
    calls.append(a)
    if where == "rename-between" and str(a).endswith(sys.argv[2].split("/")[-1]):
        os._exit(9)  # OUT was renamed aside, the new one not yet into place
    if where == "rename-after" and ".partial-" in os.path.basename(str(a)):
        os._exit(9)  # the new one in place, the old one aside not yet removed
ex.exchange = exchange
ex.os.replace = replace
convert(sys.argv[1], sys.argv[2], force=True, progress=False, max_shard_size="100KB")
"""


@pytest.mark.parametrize("where", ["before-swap", "after-swap", "rename-between", "rename-after"])
def test_force_killed_while_replacing_keeps_a_complete_out(tmp_path, where):
    from nanokern.convert import convert

    old_src, new_src = fixture("nanotron", "tp2_pp2"), fixture("nanotron", "tp2_pp1_tied")
    clean_old, clean_new = tmp_path / "clean-old", tmp_path / "clean-new"
    convert(old_src, clean_old, progress=False, max_shard_size="100KB")
    convert(new_src, clean_new, progress=False, max_shard_size="100KB")
    dst = tmp_path / "out"
    convert(old_src, dst, progress=False, max_shard_size="100KB")
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(new_src), str(dst), where], capture_output=True, text=True)
    assert r.returncode == 9, r.stderr
    if where == "rename-between":  # no exchange on this filesystem: OUT is briefly aside ...
        assert not dst.exists()
    else:  # (a kill right after the rename may leave the partial folder's marker: the next run drops it)
        left = {k: v for k, v in tree_bytes(dst).items() if k != ".nanokern-partial"}
        assert left == tree_bytes(clean_old if where == "before-swap" else clean_new)
    if where == "rename-after":  # (a complete new OUT, the old one aside, named by the intent)
        assert len(list(tmp_path.glob("out.old-*"))) == 1
    # ... and the next run puts things right before anything else, then does its own work
    convert(new_src, dst, force=True, progress=False, max_shard_size="100KB")
    assert tree_bytes(dst) == tree_bytes(clean_new)
    assert leftovers(dst) == [], leftovers(dst)


# --- disk space -----------------------------------------------------------------------------------

@pytest.fixture
def small_fs(tmp_path):
    """A 256 KiB tmpfs (mounted here: needs root)."""
    why = None
    if os.geteuid() != 0:
        why = f"mounting a small tmpfs needs root (uid {os.geteuid()})"
    mnt = tmp_path / "small"
    mnt.mkdir()
    if why is None:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
        if r.returncode != 0:
            why = f"cannot mount a tmpfs: {r.stderr.strip()}"
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_too_small_a_disk_refuses_before_writing(small_fs):
    src = fixture("nanotron", "tp2_pp2")  # about 0.8 MB of fp32 output
    dst = small_fs / "out"
    r = run_cli("convert", src, dst, "-q", "--dtype", "float32")
    line = one_error_line(r.stderr)
    assert r.returncode == 1 and str(small_fs) in line and "not enough free space" in line, line
    scale = {"B": 1e-6, "kB": 1e-3, "MB": 1.0, "GB": 1e3}  # human units (io/units.py), here in MB
    m = re.search(r"needs ([0-9.]+) (\w+), ([0-9.]+) (\w+) free", line)
    need, free = float(m[1]) * scale[m[2]], float(m[3]) * scale[m[4]]
    assert need > 0.8 and free == pytest.approx(0.26, abs=0.06), line
    assert list(small_fs.iterdir()) == []  # nothing left behind, not even the lock


def test_disk_filling_up_while_writing_names_the_file_and_keeps_finished_ones(small_fs, monkeypatch):
    import nanokern.execute.diskspace
    from nanokern.convert import make_plan
    from nanokern.errors import OutOfSpace
    from nanokern.execute import execute

    monkeypatch.setattr(nanokern.execute.diskspace, "check_fits", lambda dst, sizes: None)  # as if another writer came later
    plan = make_plan(fixture("nanotron", "tp2_pp2"), "hf", "fp32", max_shard_size="100KB")
    dst = small_fs / "out"
    with pytest.raises(OutOfSpace) as e:
        execute(plan, dst, workers=1, progress=False, backend="torch")
    msg = str(e.value)
    assert ".safetensors: no space left" in msg and "finished file(s) are kept in" in msg and "resume" in msg, msg
    work = next(small_fs.glob("out.partial-*"))
    assert any(work.glob(".nanokern-done-*.json")) and not dst.exists()


# --- Ctrl-C and SIGTERM ---------------------------------------------------------------------------

MID = dict(num_hidden_layers=2, hidden_size=1024, intermediate_size=2816, num_attention_heads=8,
           num_key_value_heads=4, vocab_size=8192, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def mid_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("mid")
    return write_nanotron(root / "nt", random_hf(MID, dtype=torch.float32, scale=0.02), MID, tp=2, pp=2)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_then_the_same_command_gives_clean_bytes(mid_checkpoint, tmp_path, sig):
    args = ["convert", mid_checkpoint, None, "-q", "--dtype", "keep", "--max-shard-size", "8MB", "--workers", "1"]
    ref = tmp_path / "ref" / "out"
    assert run_cli(*[a if a is not None else ref for a in args]).returncode == 0
    dst = tmp_path / "sig" / "out"
    cmd = [*NANOKERN, *map(str, [a if a is not None else dst for a in args])]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and journaled(dst.parent) < 1:
        time.sleep(0.002)
    proc.send_signal(sig)
    _, err = proc.communicate()
    assert proc.returncode == 128 + sig, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    kept = journaled(dst.parent)
    assert lines[0].startswith(f"interrupted ({sig.name}): {kept} of ") and "kept in" in lines[0], lines[0]
    assert "the same command resumes" in lines[0] and kept >= 1 and not dst.exists()
    r = subprocess.run([*cmd, "--json", str(tmp_path / "r.json")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["reused_files"] == kept
    assert tree_bytes(dst) == tree_bytes(ref) and leftovers(dst) == []


def test_ctrl_c_while_starting_up_is_one_line(tmp_path):
    """A signal before the first byte (here: while the command waits for another run's lock,
    after its imports, before planning) ends it with one line, 130 / 143, and nothing left."""
    from nanokern.execute import lock

    dst = tmp_path / "out"
    for sig, code in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        with lock.hold(dst):
            proc = subprocess.Popen([*NANOKERN, "convert", str(fixture("nanotron", "tp2_pp2")), str(dst), "-q", "--wait"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            assert proc.stderr.readline().startswith("waiting for pid")  # started up, waiting
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=60)
        assert proc.returncode == code, err
        name = signal.Signals(sig).name
        assert err.strip().splitlines() == [f"interrupted ({name}) before writing anything: nothing kept; run the same command again"]
        assert list(tmp_path.iterdir()) == []  # no output, no partial folder, no lock file


# --- dtype names, --help --------------------------------------------------------------------------

def test_torch_dtype_names_are_accepted(tmp_path):
    from click.testing import CliRunner

    from nanokern.cli import cli

    src = fixture("nanotron", "tp2_pp2")
    for short, long in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")):
        a, b = tmp_path / short, tmp_path / long
        for name, out in ((short, a), (long, b)):
            r = CliRunner().invoke(cli, ["convert", str(src), str(out), "-q", "--dtype", name])
            assert r.exit_code == 0, r.output
        assert tree_bytes(a) == tree_bytes(b)
        assert json.loads((b / "config.json").read_text())["dtype"] == str(getattr(torch, long)).split(".")[1]


def test_help_imports_no_heavy_library():
    code = ("import sys\nfrom nanokern.cli import cli\n"
            "for args in ([], ['convert'], ['parity'], ['bench'], ['bench', 'convert'], ['bench', 'backends'],"
            " ['verify'], ['inspect'], ['demo'], ['generate'], ['bench', 'generate']):\n"
            "    try:\n        cli([*args, '--help'], prog_name='nanokern')\n    except SystemExit:\n        pass\n"
            "heavy = [m for m in ('torch', 'transformers', 'triton', 'safetensors', 'numpy', 'nanokern.parity',"
            " 'nanokern.execute.run', 'nanokern.plan') if m in sys.modules]\n"
            "print('HEAVY', heavy)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "HEAVY []" in r.stdout, r.stdout[-500:]


@pytest.mark.parametrize("user", [None, "2"])
def test_convert_starts_numpy_without_blas_threads_unless_the_user_says(tmp_path, user):
    """numpy is first imported by the command itself (the --help test above), after it has asked
    OpenBLAS for one thread: the conversion never calls BLAS."""
    code = ("import os, sys\nfrom nanokern.cli import cli\n"
            f"try:\n    cli(['convert', {str(fixture('nanotron', 'tp2_pp2'))!r}, {str(tmp_path / 'out')!r}, '-q'], prog_name='nanokern')\n"
            "except SystemExit as e:\n    assert e.code in (0, None), e.code\n"
            "print('BLAS', 'numpy' in sys.modules, os.environ.get('OPENBLAS_NUM_THREADS'))\n")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user:
        env["OPENBLAS_NUM_THREADS"] = user
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert f"BLAS True {user or '1'}" in r.stdout, r.stdout[-500:]


def test_a_signal_while_putting_out_in_place_waits_for_it():
    code = ("import os, signal, time\nfrom nanokern.execute import signals\nsignals.install()\ndone = []\n"
            "try:\n    with signals.deferred('OUT'):\n        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(0.05)\n        done.append(1)\n"
            "except signals.Interrupted as e:\n    print(done, e.exit_code, e.message())\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "[1] 143 interrupted (SIGTERM) after OUT was put in place: it is complete", r.stderr


def test_a_resume_counts_the_space_an_unfinished_file_already_holds(tmp_path, monkeypatch):
    """A killed run leaves unfinished files at full size (posix_fallocate): the resume rewrites
    them in place, so the free-space check must not ask for their bytes a second time."""
    import nanokern.execute.diskspace
    from nanokern.convert import make_plan
    from nanokern.execute import execute, partial_dir, plan_fingerprint
    from nanokern.execute.manifest import make_work
    from nanokern.verify import verify

    plan = make_plan(fixture("nanotron", "tp2_pp2"), "hf", "fp32", max_shard_size="100KB")
    dst = tmp_path / "out"
    left = plan.files[0]
    make_work(partial_dir(dst, plan_fingerprint(plan)))  # (as the killed run made it)
    f = partial_dir(dst, plan_fingerprint(plan)) / left.path
    f.parent.mkdir(parents=True, exist_ok=True)
    with open(f, "wb") as fh:
        os.posix_fallocate(fh.fileno(), 0, left.size)
    asked = []
    check = nanokern.execute.diskspace.check_fits
    monkeypatch.setattr(nanokern.execute.diskspace, "check_fits", lambda d, sizes: asked.append(list(sizes)) or check(d, sizes))
    execute(plan, dst, workers=1, progress=False, backend="torch")
    assert asked[0][0] == 0 and asked[0][1:len(plan.files)] == [g.size for g in plan.files[1:]]
    assert verify(dst, fixture("nanotron", "tp2_pp2")).ok
