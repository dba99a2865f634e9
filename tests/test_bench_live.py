"""`nanokern bench live`: the buckets mode end to end on a tiny checkpoint (every path's tensors
in the engine's memory equal `nanokern convert`'s, a CSV row per path; the vLLM source's two
paths with vLLM 0.33.0, or skipped in one line without it), and the scratch folder:
a private one made inside the user's, removed alone (the user's folder and files stay)."""

from __future__ import annotations

import csv
import importlib.util
import os
import subprocess
import sys

import pytest

from nanokern.bench.live_buckets import COLUMNS
from nanokern.bench.live_ranks import private_scratch


def test_private_scratch_removes_only_what_it_made(tmp_path):
    user = tmp_path / "scratch"
    user.mkdir()
    (user / "mine.txt").write_text("keep")
    (user / "live-scratch").mkdir()  # (the name the bench used to remove, whatever it held)
    with private_scratch(user, tmp_path / "cache") as s:
        assert s.parent == user and s.name.startswith("nanokern-live-") and not any(s.iterdir())
        assert s.stat().st_mode & 0o077 == 0  # private (mkdtemp)
        (s / "out").mkdir()
        (s / "out" / "x").write_bytes(b"1")
    assert not s.exists() and (user / "mine.txt").read_text() == "keep" and (user / "live-scratch").is_dir()
    with pytest.raises(RuntimeError), private_scratch(None, tmp_path / "cache") as s2:
        assert s2.parent == tmp_path / "cache"
        raise RuntimeError("a failed run")
    assert not s2.exists() and (tmp_path / "cache").is_dir()


@pytest.mark.slow
def test_bench_live_buckets_tiny(tmp_path):
    """TP2 x PP1 + the engine, 4 MB fp32 -> bf16, 256 KB buckets (several): the engine's tensors
    after buckets and per-tensor equal those read from the convert folder (two_step)."""
    user = tmp_path / "scratch"
    out = tmp_path / "live_buckets.csv"
    cmd = [sys.executable, "-m", "nanokern", "bench", "live", "--mode", "buckets", "--size", "4MB", "--tp", "2", "--pp", "1",
           "--bucket-size", "256KB", "--cache-dir", str(tmp_path / "cache"), "--scratch-dir", str(user), "--csv", str(out)]
    env = {k: v for k, v in os.environ.items() if k != "NANOKERN_VLLM_PATH"}
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(COLUMNS) <= set(rows[0])
    if importlib.util.find_spec("vllm") is None:  # (the environment's own: no vLLM, its paths skipped in one line)
        assert [x["path"] for x in rows] == ["floor", "buckets", "per_tensor", "two_step"]
        assert [x for x in r.stdout.splitlines() if "vllm" in x] == [
            "vllm_full, vllm_local skipped: live.vllm_source needs vLLM's weight-transfer API (vllm 0.33 or later): "
            "No module named 'vllm' (set NANOKERN_VLLM_PATH to a folder holding it)"], r.stdout
    else:
        assert [x["path"] for x in rows] == ["floor", "buckets", "per_tensor", "vllm_full", "vllm_local", "two_step"]
    assert [x["identical"] for x in rows] == [""] + ["True"] * (len(rows) - 1), r.stdout
    assert all(float(x["seconds"]) > 0 and float(x["hf_mb"]) > 1 for x in rows)
    assert user.is_dir() and not any(user.iterdir())  # the private folder made there is gone, the user's kept


@pytest.mark.slow
def test_bench_live_vllm_paths_tiny(tmp_path):
    """TP2 x PP2 + the engine, 4 MB fp32 -> bf16, vLLM 0.33.0 from the tests' folder: vllm_full
    (each stage's TP rank 0 sending its stage's tensors) and vllm_local (every rank its chunks,
    o_proj / down_proj along dim 1: copied into place) leave convert's tensors in the engine."""
    from test_live_vllm import vllm_env

    env = {**os.environ, "NANOKERN_VLLM_PATH": str(vllm_env())}
    out = tmp_path / "live_buckets.csv"
    cmd = [sys.executable, "-m", "nanokern", "bench", "live", "--mode", "buckets", "--size", "4MB", "--tp", "2", "--pp", "2",
           "--bucket-size", "256KB", "--reps", "1", "--cache-dir", str(tmp_path / "cache"), "--csv", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "skipped" not in r.stdout, r.stdout
    with open(out, newline="") as f:
        rows = {x["path"]: x for x in csv.DictReader(f)}
    assert list(rows) == ["floor", "buckets", "per_tensor", "vllm_full", "vllm_local", "two_step"]
    assert all(rows[k]["identical"] == "True" for k in rows if k != "floor"), r.stdout
    assert all(float(rows[k]["seconds"]) > 0 and rows[k]["floor_s"] == rows["floor"]["seconds"] for k in rows)
