"""Multi-process conversion with torchrun (gloo): same bytes as one process; one rank's failure
fails the whole run and leaves no DST."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from fixtures_path import fixture
from helpers import NANOKERN, tree_bytes
from nt_reference import random_hf, write_nanotron
from safetensors.torch import load_file, save_file

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]


def convert(args, procs: int):
    cmd = [*TORCHRUN, "-m", "nanokern"] if procs > 1 else NANOKERN
    return subprocess.run([*cmd, "convert", *map(str, args), "-q"], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_export_with_several_shards_is_byte_identical(tmp_path):
    args = [fixture("nanotron", "tp2_pp2"), None, "--max-shard-size", "60KB", "--vocab-size", "250"]
    for procs in (1, 2):
        r = convert([a if a is not None else tmp_path / f"p{procs}" for a in args], procs)
        assert r.returncode == 0, r.stderr
    one, two = tree_bytes(tmp_path / "p1"), tree_bytes(tmp_path / "p2")
    assert len([k for k in one if k.endswith(".safetensors")]) > 4
    assert one == two


@pytest.mark.slow
def test_reshard_is_byte_identical(tmp_path):
    args = [fixture("nanotron", "tp1_pp1"), None, "--to", "nanotron", "--tp", "2", "--pp", "2"]
    for procs in (1, 2):
        r = convert([a if a is not None else tmp_path / f"p{procs}" for a in args], procs)
        assert r.returncode == 0, r.stderr
    assert tree_bytes(tmp_path / "p1") == tree_bytes(tmp_path / "p2")


@pytest.mark.slow
def test_failure_on_one_rank_fails_the_run(tmp_path):
    cfg = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=64, tie_word_embeddings=False)
    src = write_nanotron(tmp_path / "nt", random_hf(cfg), cfg, tp=2, pp=1)
    # a NaN in one down_proj shard: with --strict the rank that writes that tensor fails
    f = next((src / "0/model/model/decoder/1/pp_block/mlp/down_proj").glob("*tp-rank-1-of-2.safetensors"))
    t = load_file(f)
    t["data"][0, 0] = float("nan")
    save_file(t, str(f), metadata={"version": "1.5", "unsharded_shape": "(32, 64)",
                                   "local_global_slices_pairs": "None,None,None|None,None,None#None,None,None|32,64,None"})
    r = convert([src, tmp_path / "out", "--max-shard-size", "5KB", "--strict"], 2)
    assert r.returncode != 0
    assert "non-finite" in r.stderr and "down_proj" in r.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob("out.partial-*"))
    r = convert([src, tmp_path / "out", "--max-shard-size", "5KB"], 2)  # without --strict: a warning
    assert r.returncode == 0 and "non-finite" in r.stderr
    name = "model.layers.1.mlp.down_proj.weight"
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert torch.isnan(load_file(tmp_path / "out" / index["weight_map"][name])[name]).any()


@pytest.mark.slow
def test_every_rank_destroys_its_process_group(tmp_path):
    """A gloo group left to the interpreter's teardown aborts a rank now and then (its worker
    threads are destroyed while joinable: "terminate called without an active exception",
    SIGABRT). Each rank must have destroyed the group nanokern made before it exits: checked at
    exit by an atexit hook, so the test does not depend on the race being lost."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import atexit, sys\n"
        "def _check():\n"
        "    d = sys.modules.get('torch.distributed')\n"
        "    if d is not None and d.is_available() and d.is_initialized():\n"
        "        sys.stderr.write('PROCESS GROUP LEFT ALIVE\\n')\n"
        "atexit.register(_check)\n")
    env = {**__import__("os").environ, "PYTHONPATH": str(hook)}
    for args in ([fixture("nanotron", "tp2_pp2"), tmp_path / "ok"],  # success
                 [tmp_path / "missing", tmp_path / "bad"]):  # a failure every rank shares
        r = subprocess.run([*TORCHRUN, "-m", "nanokern", "convert", *map(str, args), "-q"], capture_output=True,
                           text=True, timeout=300, env=env)
        assert "PROCESS GROUP LEFT ALIVE" not in r.stderr and "terminate called" not in r.stderr, r.stderr
    assert (tmp_path / "ok" / "config.json").is_file()
