"""Execution: atomic output, --force, --dry-run, --json, resume after kill -9, verify."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
import torch
from fixtures_path import fixture
from helpers import NANOKERN, journaled, run_cli, tree_bytes
from nt_reference import random_hf, write_nanotron


def test_refuses_existing_dst_and_force_replaces(tmp_path):
    src = fixture("nanotron", "tp2_pp2")
    dst = tmp_path / "out"
    assert run_cli("convert", src, dst, "-q", "--dtype", "fp32").returncode == 0
    before = tree_bytes(dst)
    r = run_cli("convert", src, dst, "-q")
    assert r.returncode == 1 and "use --force" in r.stderr and str(dst) in r.stderr
    assert tree_bytes(dst) == before
    r = run_cli("convert", src, dst, "-q", "--force", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    assert tree_bytes(dst) != before and (dst / "model.safetensors").is_file()
    rep = json.loads((tmp_path / "r.json").read_text())
    assert rep["ok"] and rep["target"] == "hf" and rep["tensors"] == 39
    assert not list(tmp_path.glob("out.partial-*")) and not list(tmp_path.glob("out.old-*"))


def test_dry_run_writes_nothing(tmp_path):
    r = run_cli("convert", fixture("nanotron", "tp2_pp2"), tmp_path / "out", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "q_proj" in r.stdout and "model_weight_pp-rank-0-of-2_tp-rank-1-of-2.safetensors" in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_inspect_reports_layout():
    r = run_cli("inspect", fixture("nanotron", "tp2_pp2"))
    assert r.returncode == 0, r.stderr
    assert "TP=2 PP=2" in r.stdout and "PP rank 0: embedding, layers 0-2" in r.stdout
    assert "PP rank 1: layer 3, final_norm, lm_head" in r.stdout and "205,376 parameters" in r.stdout


def test_bad_source_is_one_line_and_no_dst(tmp_path):
    r = run_cli("convert", tmp_path / "nope", tmp_path / "out")
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_manifest_crcs_are_the_stdlib_crc32_of_the_bytes(tmp_path):
    import zlib

    dst = tmp_path / "out"
    r = run_cli("convert", fixture("nanotron", "tp2_pp2"), dst, "-q", "--max-shard-size", "20KB")
    assert r.returncode == 0, r.stderr
    files = json.loads((dst / "nanokern-manifest.json").read_text())["files"]
    assert len(files) > 1
    for rel, entry in files.items():
        data = (dst / rel).read_bytes()
        assert len(data) == entry["size"]
        assert zlib.crc32(data[: min(t["offset"] for t in entry["tensors"].values())]) == entry["header_crc32"]
        for name, t in entry["tensors"].items():
            assert zlib.crc32(data[t["offset"] : t["offset"] + t["nbytes"]]) == t["crc32"], (rel, name)


@pytest.mark.slow
def test_verify_detects_a_flipped_byte_in_any_tensor(tmp_path):
    dst = tmp_path / "hf"
    assert run_cli("convert", fixture("nanotron", "tp2_pp1_tied"), dst, "-q", "--max-shard-size", "100KB").returncode == 0
    assert run_cli("verify", dst).returncode == 0
    manifest = json.loads((dst / "nanokern-manifest.json").read_text())
    for rel, entry in list(manifest["files"].items())[:2]:
        for name, t in list(entry["tensors"].items())[::7]:
            f = dst / rel
            data = bytearray(f.read_bytes())
            pos = t["offset"] + t["nbytes"] // 2
            data[pos] ^= 0x01
            f.write_bytes(data)
            r = run_cli("verify", dst)
            assert r.returncode == 1 and name in r.stderr, (name, r.stderr)
            data[pos] ^= 0x01
            f.write_bytes(data)
    assert run_cli("verify", dst).returncode == 0


BIG = dict(num_hidden_layers=4, hidden_size=1024, intermediate_size=2816, num_attention_heads=8,
           num_key_value_heads=4, vocab_size=8192, tie_word_embeddings=False)


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("big")
    write_nanotron(root / "nt", random_hf(BIG, dtype=torch.float32, scale=0.02), BIG, tp=2, pp=2)
    size = sum(p.stat().st_size for p in (root / "nt").rglob("*.safetensors"))
    assert size > 100e6
    return root / "nt"


@pytest.mark.slow
def test_kill_and_rerun_gives_identical_bytes(big_checkpoint, tmp_path):
    args = ["convert", big_checkpoint, None, "-q", "--dtype", "keep", "--max-shard-size", "25MB", "--workers", "1",
            "--backend", "cpu"]
    ref = tmp_path / "ref" / "out"
    r = run_cli(*[a if a is not None else ref for a in args])
    assert r.returncode == 0, r.stderr
    want = tree_bytes(ref)
    dst = tmp_path / "kill" / "out"
    reused = []
    for moment in (0, 1, 4):  # kill when the partial folder holds this many finished files
        proc = subprocess.Popen([*NANOKERN, *map(str, [a if a is not None else dst for a in args]), "--json",
                                 tmp_path / "r.json"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if list(dst.parent.glob("out.partial-*")) and journaled(dst.parent) >= moment:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not dst.exists(), f"DST appeared after kill at moment {moment}"
        assert journaled(dst.parent) >= moment
    r = run_cli(*[a if a is not None else dst for a in args], "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    reused.append(json.loads((tmp_path / "r.json").read_text())["reused_files"])
    assert reused[0] >= 4  # the finished files were reused, not rewritten
    assert tree_bytes(dst) == want
    assert not list(dst.parent.glob("out.partial-*"))


def test_staged_pipeline_with_a_budget_smaller_than_a_tensor(tmp_path):
    """The GPU path's chunked staging (run on host tensors here) gives the same bytes as the
    direct path, also when only a few rows of a tensor fit in the budget, with permuted rows."""
    from nanokern.convert import make_plan
    from nanokern.execute import execute

    c = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=96, num_attention_heads=8, num_key_value_heads=4,
             vocab_size=64, tie_word_embeddings=False)
    src = write_nanotron(tmp_path / "nt", random_hf(c, dtype=torch.float32), c, tp=2, interleaved=True)
    for dtype in ("bf16", "fp16"):
        plan = make_plan(src, "hf", dtype)
        execute(plan, tmp_path / f"direct-{dtype}", backend="torch", progress=False)
        for budget in (3 * 1024, 20 * 1024):  # 1-2 rows per chunk; 5 rows (chunks cut across heads)
            execute(plan, tmp_path / f"staged-{dtype}-{budget}", backend="torch", progress=False, staging_bytes=budget)
            assert tree_bytes(tmp_path / f"direct-{dtype}") == tree_bytes(tmp_path / f"staged-{dtype}-{budget}")


@pytest.mark.parametrize("dtype", ["keep", "bf16"])
def test_parallel_workers_and_small_chunks_give_the_single_worker_torch_bytes(tmp_path, monkeypatch, dtype):
    """Several files written by 3 workers with the cpu backend through 8 KB staging chunks (many
    buffers, unaligned tails carried between them, checks on the checker thread) are byte for
    byte the single-worker torch-backend output, manifest included."""
    import nanokern.execute as ex
    from nanokern.convert import make_plan

    c = dict(num_hidden_layers=3, hidden_size=96, intermediate_size=160, num_attention_heads=6, num_key_value_heads=2,
             vocab_size=250, tie_word_embeddings=False)
    src = write_nanotron(tmp_path / "nt", random_hf(c, dtype=torch.float32), c, tp=2, pp=2, interleaved=True)
    plan = make_plan(src, "hf", dtype, max_shard_size="100KB")
    assert len(plan.files) >= 4
    ex.execute(plan, tmp_path / "one", backend="torch", workers=1, progress=False)
    import nanokern.execute.write

    monkeypatch.setattr(nanokern.execute.write, "CHUNK_BYTES", 8 << 10)
    ex.execute(plan, tmp_path / "three", backend="cpu", workers=3, progress=False)
    assert tree_bytes(tmp_path / "three") == tree_bytes(tmp_path / "one")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("budget", [None, 64 * 1024])
def test_cuda_staged_conversion_matches_cpu(tmp_path, budget):
    from nanokern.convert import make_plan
    from nanokern.execute import execute

    c = dict(num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=1000, tie_word_embeddings=False)
    src = write_nanotron(tmp_path / "nt", random_hf(c, dtype=torch.float32), c, tp=2, pp=2, interleaved=True)
    for dtype in ("bf16", "fp16", "keep"):
        plan = make_plan(src, "hf", dtype, vocab_size=999)
        execute(plan, tmp_path / f"cpu-{dtype}", backend="torch", progress=False)
        execute(plan, tmp_path / f"cuda-{dtype}", backend="auto", device="cuda", progress=False, staging_bytes=budget)
        assert tree_bytes(tmp_path / f"cpu-{dtype}") == tree_bytes(tmp_path / f"cuda-{dtype}")


def test_sources_close_while_a_view_is_alive(tmp_path):
    """An interrupted run closes its source maps while an exception's traceback may still hold a
    numpy view of one: closing must not raise (BufferError would replace the interruption's
    one-line message), and the view stays readable until it goes."""
    import numpy as np
    from safetensors.numpy import save_file

    from nanokern.execute.fill import Sources
    from nanokern.io.safetensors import read_header

    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(tmp_path / "a.safetensors"))
    ref = read_header(tmp_path / "a.safetensors").tensors["w"]
    sources = Sources()
    view = sources.array(ref)
    sources.close()
    assert view.sum() == 66.0
