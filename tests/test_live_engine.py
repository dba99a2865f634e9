"""From a training job to an inference engine (gloo, CPU, under torchrun; the checks run in
tests/test_live_engine_worker.py): the TP x PP ranks push their weights in live.hf_buckets over
a process group to one more rank holding a transformers model, which loads them by name; its
weights and logits equal, bit for bit, those of the same model loaded from `nanokern convert`'s
folder; after an "optimizer step" on every rank's shards a second push updates it, equal to the
convert of the checkpoint whose files took the same step (written here, independently of the
job's ranks)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_path import NANOTRON_FIXTURES, QWEN2_FIXTURES, fixture
from helpers import load_dir
from safetensors import safe_open
from safetensors.torch import save_file

from nanokern.convert import convert

WORKER = Path(__file__).with_name("test_live_engine_worker.py")
TP_PP = {"tp1_pp1": (1, 1), "tp1_pp1_fp32": (1, 1), "tp2_pp2": (2, 2), "tp2_pp1_tied": (2, 1), **QWEN2_FIXTURES}
DTYPE = {"tp1_pp1_fp32": "keep"}  # (fp32 end to end); the others bf16


def stepped_copy(fx: Path, dst: Path) -> Path:
    """A copy of the checkpoint with every weight x -> x * 0.75 + 2**-8 (the worker's step(),
    in the same dtype, two correctly rounded ops), its files' metadata kept."""
    shutil.copytree(fx, dst)
    files = sorted(dst.glob("*/model/**/*.safetensors"))
    assert files, dst
    for f in files:
        with safe_open(str(f), "pt") as h:
            meta, tensors = h.metadata(), {k: h.get_tensor(k) for k in h.keys()}
        save_file({k: t.mul_(0.75).add_(2**-8) for k, t in tensors.items()}, str(f), metadata=meta)
    return dst


def case(name: str, tmp: Path, bucket_bytes: int = 1 << 15) -> dict:
    fx = fixture("nanotron", name)
    dtype = DTYPE.get(name, "bf16")
    before, after = tmp / f"{name}-before", tmp / f"{name}-after"
    convert(fx, before, to="hf", dtype=dtype, progress=False)
    convert(stepped_copy(fx, tmp / f"{name}-stepped"), after, to="hf", dtype=dtype, progress=False)
    tdt = next(iter(load_dir(before).values())).dtype
    tp, pp = TP_PP[name]
    return {"fixture": str(fx), "tp": tp, "pp": pp, "dtype": dtype, "torch_dtype": str(tdt).removeprefix("torch."),
            "before": str(before), "after": str(after), "bucket_bytes": bucket_bytes}


def launch(tmp: Path, cases: list[dict], device: str = "cpu") -> str:
    spec = tmp / "cases.json"
    spec.write_text(json.dumps({"cases": cases, "device": device}))
    world = max(c["tp"] * c["pp"] for c in cases) + 1  # the grid, and the engine last
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world), str(WORKER), str(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert r.returncode == 0 and not fails, "\n".join(fails[:20]) + "\n" + r.stderr[-4000:]
    assert "engine checks: 0 failure(s)" in r.stdout
    return r.stdout


def test_stepped_copy_changes_every_weight(tmp_path):
    """The reference of the second push is a different model (else that check proves nothing)."""
    fx = fixture("nanotron", "tp2_pp2")
    st = stepped_copy(fx, tmp_path / "st")
    for f in sorted(fx.glob("*/model/**/*.safetensors")):
        with safe_open(str(f), "pt") as a, safe_open(str(st / f.relative_to(fx)), "pt") as b:
            assert a.metadata() == b.metadata()
            x, y = a.get_tensor("data"), b.get_tensor("data")
            assert x.dtype == y.dtype and not torch.equal(x, y)


@pytest.mark.slow  # (5 processes started by torchrun; the fast loop checks buckets in test_live_buckets)
def test_trainer_pushes_buckets_to_an_engine_tp2_pp2(tmp_path):
    """TP2 x PP2 (+ the engine: 5 processes), bf16, buckets of 32 KiB (several, a few tensors alone)."""
    launch(tmp_path, [case("tp2_pp2", tmp_path)])


@pytest.mark.slow
def test_trainer_pushes_buckets_to_an_engine_every_family(tmp_path):
    """Every other fixture: Llama TP1 (bf16, fp32 kept), tied TP2, Qwen2 dense / bias (PP2) /
    sliding window (TP2), SmolLM3 NoPE tied, Qwen2-MoE (PP2: per-expert tensors into the fused
    experts); one bucket size where everything travels alone."""
    names = [n for n in [*NANOTRON_FIXTURES, *QWEN2_FIXTURES] if n != "tp2_pp2"]
    cases = [case(n, tmp_path) for n in names]
    (tmp_path / "one").mkdir()
    cases.append(case("tp2_pp2", tmp_path / "one", bucket_bytes=1))
    launch(tmp_path, cases)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (a grid rank and the engine, NCCL)")
def test_trainer_pushes_buckets_to_an_engine_nccl(tmp_path):
    """The same over NCCL, one GPU per process: the largest grid the GPUs allow (TP2 x PP2 on 5+,
    TP2 x PP1 on 3-4, TP1 x PP1 on 2) and the engine."""
    n = torch.cuda.device_count()
    name = "tp2_pp2" if n >= 5 else "tp2_pp1_tied" if n >= 3 else "tp1_pp1"
    launch(tmp_path, [case(name, tmp_path)], device="cuda")
