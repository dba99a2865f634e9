"""nanokern.live with dtype="fp8": hf_weights, hf_buckets (unpacked), hf_metadata and save_hf give
`nanokern convert --dtype fp8 [--fp8-scale ue8m0]`'s export of the same checkpoint, byte for byte:
each FP8 weight, then its weight_scale_inv, in the export's order.

- in one process (a TP=1 PP=1 grid, no torch.distributed): the host path, and the device path (the
  torch op, what runs on a GPU) run on CPU tensors; CUDA where present (-m gpu);
- under torchrun (gloo, 4 ranks; tests/test_live_fp8_worker.py): TP2 x PP2 with RoPE-permuted
  q/k (k's blocks made of two TP shards: the scratch path), TP2 MoE (transposed experts), and
  a real fixture (nothing divides by 128 there: bf16 and the config's quantization_config).
The real fixtures have no dim that divides by 128, so the quantized tensors come from synthetic
checkpoints written by the bench's generator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures_path import fixture
from helpers import load_dir, tree_bytes
from marks import slow_except

from nanokern import live
from nanokern.bench.synthetic import Shape, write_checkpoint
from nanokern.convert import convert
from nanokern.live import stream

SCALES = ("float", "ue8m0")
WORKER = Path(__file__).with_name("test_live_fp8_worker.py")


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def export(ck: Path, dst: Path, scale: str) -> Path:
    convert(ck, dst, to="hf", dtype="fp8", fp8_scale=scale, progress=False)
    return dst


def file_order(folder: Path) -> list[str]:
    """The export's tensor names in file order (each FP8 weight, then its scales)."""
    out = []
    for f in sorted(folder.glob("*.safetensors")):
        n = int.from_bytes(f.read_bytes()[:8], "little")
        header = json.loads(f.read_bytes()[8 : 8 + n])
        out += sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    return out


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A synthetic MoE (dims divide by 128: attention, MLP and experts quantized) and its exports."""
    tmp = tmp_path_factory.mktemp("livefp8")
    ck = write_checkpoint(tmp / "ck", Shape(1, 256, 256, 2, 2, 256, "moe"), 1, 1, "bf16", seed=11)
    return ck, {s: export(ck, tmp / f"ref-{s}", s) for s in SCALES}


def check(ck: Path, refs: dict, device: str, backend: str, tmp: Path, scales=SCALES, whole: bool = True) -> None:
    """hf_weights and hf_metadata (whole: also hf_buckets and save_hf) against the exports."""
    shards = live.load_rank(ck, 0, 0, device=device)
    for scale in scales:
        ref = refs[scale]
        want = load_dir(ref)
        quantized = [n for n, t in want.items() if t.dtype == torch.float8_e4m3fn]
        assert quantized and all(want[n.removesuffix("weight") + "weight_scale_inv"].dtype == torch.float32 for n in quantized)
        got = [(n, t.to("cpu", copy=True)) for n, t in live.hf_weights(shards, dtype="fp8", fp8_scale=scale, backend=backend)]
        meta = live.hf_metadata(shards, dtype="fp8", fp8_scale=scale)
        assert [n for n, _ in got] == [n for n, *_ in meta] and sorted(n for n, _ in got) == sorted(want)
        for (n, t), (_, shape, dt) in zip(got, meta):
            assert t.dtype == dt == want[n].dtype and tuple(t.shape) == shape and torch.equal(_bytes(t), _bytes(want[n])), (scale, n)
        names = [n for n, _ in got]  # each weight then its scales, as in the files
        assert all(names[names.index(n) + 1] == n.removesuffix("weight") + "weight_scale_inv" for n in quantized)
        if not whole:
            continue
        packed = [(n, t.to("cpu", copy=True)) for b in live.hf_buckets(shards, dtype="fp8", fp8_scale=scale, backend=backend,
                                                                     bucket_bytes=1 << 16) for n, t in live.unpack(b)]
        assert [n for n, _ in packed] == names and all(torch.equal(_bytes(t), _bytes(want[n])) for n, t in packed)
        out = tmp / f"{scale}-{device}-{backend}"
        live.save_hf(shards, out, dtype="fp8", fp8_scale=scale, backend=backend)
        assert tree_bytes(out) == tree_bytes(ref)
        assert file_order(out) == file_order(ref)


@pytest.mark.parametrize("scale", slow_except(SCALES, ["ue8m0"]))
def test_host_path_matches_convert(moe, scale, tmp_path):
    ck, refs = moe
    check(ck, refs, "cpu", "cpu", tmp_path, [scale])


@pytest.mark.parametrize("backend", slow_except(["torch", "triton"], ["torch"]))
def test_device_path_on_cpu_matches_convert(moe, backend, monkeypatch, tmp_path):
    """The GPU's quantize (stream._quantize_device: the torch op over the bands, the float32
    scratch filled by the device fill) run on CPU tensors: a planted fault there fails here
    (the fast loop: hf_weights, ue8m0; buckets and save_hf copy what it makes, as on the host)."""
    from nanokern.ops import _triton

    if backend == "triton" and not _triton.interpreted():
        pytest.skip("Triton compiles for the GPU here (no interpreter)")
    monkeypatch.setattr(stream, "_quantize_host", stream._quantize_device)
    ck, refs = moe
    if backend == "torch":
        check(ck, refs, "cpu", backend, tmp_path, ["ue8m0"], whole=False)
    else:
        check(ck, refs, "cpu", backend, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_cuda_matches_convert(moe, backend, tmp_path):
    from nanokern.ops import available_backends

    if backend not in available_backends("cuda"):
        pytest.skip(f"backend {backend} is not available on cuda here")
    ck, refs = moe
    check(ck, refs, "cuda", backend, tmp_path)


def test_scale_format_needs_fp8(moe):
    ck, _ = moe
    shards = live.load_rank(ck, 0, 0)
    with pytest.raises(live.NanokernError, match="--dtype fp8"):
        live.hf_metadata(shards, dtype="bf16", fp8_scale="ue8m0")
    with pytest.raises(live.NanokernError, match="choose float or ue8m0"):
        live.hf_metadata(shards, dtype="fp8", fp8_scale="e8m0")


def _interleaved(ck: Path) -> Path:
    for mc in ck.glob("*/model_config.json"):
        cfg = json.loads(mc.read_text())
        cfg["rope_interleaved"] = True
        mc.write_text(json.dumps(cfg))
    return ck


@pytest.mark.slow
def test_multi_rank_matches_convert(tmp_path):
    """4 gloo ranks: TP2 x PP2 (interleaved RoPE), TP2 MoE and a real fixture, float and ue8m0."""
    cases = []
    llama = _interleaved(write_checkpoint(tmp_path / "llama", Shape(2, 256, 512, 4, 2, 512, "llama"), 2, 2, "fp32", seed=3))
    moe = write_checkpoint(tmp_path / "moe", Shape(2, 256, 256, 2, 2, 256, "moe"), 2, 1, "bf16", seed=4)
    for name, ck, tp, pp in (("llama", llama, 2, 2), ("moe", moe, 2, 1)):
        cases.append({"fixture": str(ck), "tp": tp, "pp": pp, "dst": tp * pp - 1, "quantized": True,
                      "refs": {s: str(export(ck, tmp_path / "ref" / f"{name}-{s}", s)) for s in SCALES}})
    fx = fixture("nanotron", "tp2_pp2")
    cases.append({"fixture": str(fx), "tp": 2, "pp": 2, "quantized": False,
                  "refs": {"float": str(export(fx, tmp_path / "ref" / "tp2_pp2", "float"))}})
    spec = tmp_path / "cases.json"
    spec.write_text(json.dumps({"out": str(tmp_path / "live"), "cases": cases}))
    (tmp_path / "live").mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4", str(WORKER), str(spec)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    fails = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert r.returncode == 0 and not fails, "\n".join(fails[:20]) + "\n" + r.stderr[-4000:]
    assert "live fp8 checks: 0 failure(s)" in r.stdout
