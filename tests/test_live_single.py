"""nanokern.live in one process (a TP=1 PP=1 grid, no torch.distributed): the device path, i.e.
what runs on a GPU (the plan's pieces through the torch op: cuda, triton or torch backend), checked
here on the CPU against the file converter, and on CUDA where a device is present (-m gpu):
hf_weights, hf_buckets (unpacked) and save_hf equal `nanokern convert` of the same checkpoint, bf16
and keep, dense and MoE (experts transposed one at a time); what a consumer keeps stays valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fixtures_path import fixture
from helpers import load_dir, tree_bytes

from nanokern import live
from nanokern.convert import convert
from nanokern.live import stream


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """{name: (checkpoint, {dtype: its convert export})}: a real fixture and a synthetic MoE."""
    from nanokern.bench.synthetic import choose_shape, write_checkpoint

    tmp = tmp_path_factory.mktemp("live1")
    moe = write_checkpoint(tmp / "moe", choose_shape(3_000_000, "fp32", 1, "moe"), 1, 1, "fp32")
    out = {}
    for name, ck in (("tp1_pp1_fp32", fixture("nanotron", "tp1_pp1_fp32")), ("moe", moe)):
        refs = {}
        for dtype in ("bf16", "keep"):
            refs[dtype] = tmp / f"{name}-{dtype}"
            convert(ck, refs[dtype], to="hf", dtype=dtype, progress=False)
        out[name] = (ck, refs)
    return out


def _check(ck: Path, refs: dict, device: str, backend: str, tmp: Path) -> None:
    shards = live.load_rank(ck, 0, 0, device=device)
    for dtype, ref in refs.items():
        want = load_dir(ref)
        got = {n: t.to("cpu", copy=True) for n, t in live.hf_weights(shards, dtype=dtype, backend=backend)}
        assert sorted(got) == sorted(want)
        bad = [n for n in got if got[n].dtype != want[n].dtype or not torch.equal(got[n].view(-1).view(torch.uint8),
                                                                                   want[n].view(-1).view(torch.uint8))]
        assert not bad, (dtype, bad[:5])
        packed = [(n, t.to("cpu", copy=True)) for b in live.hf_buckets(shards, dtype=dtype, backend=backend, bucket_bytes=1 << 16)
                  for n, t in live.unpack(b)]
        assert [n for n, _ in packed] == list(got)
        assert all(torch.equal(t.view(-1).view(torch.uint8), want[n].view(-1).view(torch.uint8)) for n, t in packed), dtype
        out = tmp / f"{ck.name}-{dtype}-{device}-{backend}"
        live.save_hf(shards, out, dtype=dtype, backend=backend)
        assert tree_bytes(out) == tree_bytes(ref)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_device_path_on_cpu_matches_convert(sources, backend, monkeypatch, tmp_path):
    """The GPU's fill (stream._fill_device) run on CPU tensors: a planted fault there fails here."""
    def device_fill(t, out, units, b):
        out.zero_()
        stream._fill_device(t, out, units, b)

    monkeypatch.setattr(stream, "fill", device_fill)
    for ck, refs in sources.values():
        _check(ck, refs, "cpu", backend, tmp_path)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton", "torch"])
def test_cuda_matches_convert(sources, backend, tmp_path):
    from nanokern.ops import available_backends

    if backend not in available_backends("cuda"):
        pytest.skip(f"backend {backend} is not available on cuda here")
    for ck, refs in sources.values():
        _check(ck, refs, "cuda", backend, tmp_path)


def _bytes(t):
    return t.reshape(-1).view(torch.uint8)


@pytest.mark.parametrize("dtype", ["bf16", "keep"])
def test_kept_tensors_stay_valid(sources, dtype):
    """A consumer that keeps what hf_weights yields (a list, a slice of each, a numpy view of
    each) keeps the convert export's bytes; a consumer that drops each tensor costs at most three
    of the largest tensor (its loop variable's, the one being filled, spares kept for sizes still
    to come) plus the units, and buffers of a size seen before are filled again once dropped."""
    ck, refs = sources["tp1_pp1_fp32"]
    want = load_dir(refs[dtype])
    shards = live.load_rank(ck, 0, 0)
    kept = list(live.hf_weights(shards, dtype=dtype))
    assert [n for n, _ in kept] == [n for n, *_ in live.hf_metadata(shards, dtype=dtype)]
    assert all(torch.equal(_bytes(t), _bytes(want[n])) for n, t in kept)
    heads, arrays = {}, {}
    for n, t in live.hf_weights(shards, dtype=dtype):
        heads[n] = t.reshape(-1)[-3:]  # a view of the last elements only: the buffer stays held
        arrays[n] = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
    for n, w in want.items():
        assert torch.equal(_bytes(heads[n]), _bytes(w.reshape(-1)[-3:]))
    for n, w in want.items():
        assert arrays[n].tobytes() == _bytes(w).numpy().tobytes(), n
    stats: dict = {}
    count = sum(torch.equal(_bytes(t), _bytes(want[n])) for n, t in live.hf_weights(shards, dtype=dtype, stats=stats))
    assert count == len(want)
    assert stats["peak_bytes"] <= 3 * stats["largest_tensor_bytes"] + stats["largest_unit_bytes"] == stats["bound_bytes"]
    assert stats["allocations"] < len(want)  # recycled: several tensors share a size


def test_reuse_buffer_is_the_documented_view(sources):
    """reuse_buffer=True: every tensor is a view of one buffer, valid until the next step."""
    ck, refs = sources["tp1_pp1_fp32"]
    want = load_dir(refs["bf16"])
    shards = live.load_rank(ck, 0, 0)
    stats: dict = {}
    ptrs, ok = set(), 0
    for n, t in live.hf_weights(shards, reuse_buffer=True, stats=stats):
        ptrs.add(t.untyped_storage().data_ptr())
        ok += torch.equal(_bytes(t), _bytes(want[n]))
    assert ok == len(want) and len(ptrs) == 1 and stats["allocations"] == 1
    kept = list(live.hf_weights(shards, reuse_buffer=True))
    assert sum(torch.equal(_bytes(t), _bytes(want[n])) for n, t in kept) < len(want)


def test_a_packer_that_concatenates_later_gets_the_export(sources):
    """What vLLM's trainer-side packer does with an iterator of (name, tensor): keep each tensor's
    bytes in a list until the buffer size is passed, then concatenate; the receiver splits by
    size. Every tensor must come out as the export's (with one reused buffer, almost none did)."""
    ck, refs = sources["tp1_pp1_fp32"]
    want = load_dir(refs["bf16"])
    shards = live.load_rank(ck, 0, 0)
    metas, packed, chunk, size = [], [], [], 0
    for name, t in live.hf_weights(shards):
        chunk.append(t.view(torch.uint8).view(-1))
        metas.append((name, t.shape, t.dtype, t.numel() * t.element_size()))
        size += chunk[-1].numel()
        if size > 1 << 16:
            packed.append(torch.cat(chunk))
            chunk, size = [], 0
    packed.append(torch.cat(chunk))
    flat = torch.cat(packed)
    parts = flat.split([m[3] for m in metas])
    bad = [n for (n, shape, dt, _), p in zip(metas, parts) if not torch.equal(p.view(dt).view(shape), want[n])]
    assert len(metas) == len(want) and not bad, bad[:5]
