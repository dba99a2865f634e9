"""live.hf_buckets in one process (TP=1 PP=1; the collective cases run in tests/test_live.py):
the packing rules, the buffers' turns, and unpack's CRC check."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from fixtures_path import fixture
from helpers import load_dir

from nanokern import live
from nanokern.convert import convert
from nanokern.live.buckets import layout


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    ck = fixture("nanotron", "tp1_pp1_fp32")
    ref = tmp_path_factory.mktemp("buckets") / "keep"
    convert(ck, ref, to="hf", dtype="keep", progress=False)
    return live.load_rank(ck, 0, 0), load_dir(ref)


def test_buckets_rules_and_buffer_turns(fp32):
    """Packed back to back within bucket_bytes, a larger tensor alone; a bucket's buffer comes
    back num_buffers shared buckets later, not earlier; unpacked views equal the export."""
    shards, want = fp32
    sizes = [t.numel() * t.element_size() for t in want.values()]
    cap = max(sizes) - 1  # the largest tensors get buckets of their own
    seen, ptrs, own = [], [], []
    for b in live.hf_buckets(shards, dtype="keep", bucket_bytes=cap, num_buffers=3):
        assert b.ends[-1] <= cap or len(b.names) == 1
        ptrs.append((b.packed_tensor.untyped_storage().data_ptr(), b.ends[-1] > cap))
        if b.ends[-1] > cap:
            own.append(b.packed_tensor)  # (kept: its address is not handed out again meanwhile)
        seen += [(n, torch.equal(t, want[n])) for n, t in live.unpack(b)]
    assert len(seen) == len(want) and all(ok for _, ok in seen)
    shared = [p for p, alone in ptrs if not alone]
    assert len(set(shared)) == 3 and all(shared[i] == shared[i % 3] for i in range(len(shared)))
    assert all(p not in shared for p, alone in ptrs if alone)


def test_unpack_refuses_changed_bytes(fp32):
    shards, _ = fp32
    b = next(iter(live.hf_buckets(shards, dtype="keep", bucket_bytes=1 << 20)))
    live.unpack(b)
    b.packed_tensor[b.ends[-1] // 2] ^= 1
    with pytest.raises(live.NanokernError, match="CRC32"):
        live.unpack(b)
    assert len(live.unpack(b, verify=False)) == len(b.names)


def test_layout_aligns_each_start_to_its_element_size():
    """Mixed dtypes: a bf16 tensor of odd length is followed by an fp32 one at a multiple of 4."""
    def t(n, dt):
        return SimpleNamespace(nbytes=n * dt.itemsize, dtype=SimpleNamespace(torch=dt))

    groups = layout([t(3, torch.bfloat16), t(2, torch.float32), t(1, torch.bfloat16), t(9, torch.float32)], 24)
    assert [[s for _, s in g] for g in groups] == [[0, 8, 16], [0]]
    with pytest.raises(live.NanokernError, match="positive"):
        next(iter(live.hf_buckets(None, num_buffers=0)))


@pytest.mark.parametrize("timeout", [0, -1, "60", True, None])
def test_a_bad_timeout_is_one_line(fp32, timeout):
    shards, _ = fp32
    if timeout is not None:  # (hf_weights: None is no limit between steps)
        with pytest.raises(live.NanokernError, match=r"^timeout must be a positive number of seconds \(or None\), not "):
            next(iter(live.hf_weights(shards, timeout=timeout)))
    with pytest.raises(live.NanokernError, match="timeout must be"):
        live.hf_metadata(shards, timeout=timeout)


def _run(shards, **kw) -> list[tuple]:
    """[(names, bytes, crc32, storage address, own bucket)] of one hf_buckets call (bytes cloned at once)."""
    out = []
    for b in live.hf_buckets(shards, num_buffers=2, **kw):
        store = b.packed_tensor.untyped_storage()
        alone = b.ends[-1] > kw["bucket_bytes"]
        out.append((b.names, b.packed_tensor.clone(), b.crc32, (store.data_ptr(), store.nbytes()), alone))
    return out


def test_bucket_buffers_are_reused_across_calls_and_grown(fp32):
    """Calls with one BucketBuffers give the same buckets, byte for byte, as fresh calls; a call
    refills the buffers of the one before; one with larger buckets (fp32 after bf16: two buckets
    of up to 600 KB after one of 410 KB) grows them, a smaller one after reuses the grown ones; a
    tensor larger than bucket_bytes never goes in them; one call at a time."""
    shards, want = fp32
    runs = [("bf16", 600_000), ("bf16", 600_000), ("keep", 600_000), ("keep", 600_000), ("bf16", 600_000), ("keep", 60_000)]
    fresh = {r: _run(shards, dtype=r[0], bucket_bytes=r[1]) for r in set(runs)}
    kept = live.BucketBuffers()
    calls = [_run(shards, dtype=dt, bucket_bytes=cap, buffers=kept) for dt, cap in runs]
    for got, r in zip(calls, runs):
        assert [(n, c) for n, _, c, _, _ in got] == [(n, c) for n, _, c, _, _ in fresh[r]]
        assert all(torch.equal(g[1], f[1]) for g, f in zip(got, fresh[r]))
    ptrs = [{p for *_, p, own in got if not own} for got in calls]  # {(address, bytes)} of the shared buffers
    largest = [max(b.numel() for _, b, _, _, own in got if not own) for got in calls]
    assert len(ptrs[0]) == 1 and ptrs[1] == ptrs[0] and {n for _, n in ptrs[0]} == {largest[0]}  # reused
    assert largest[2] > largest[0] and len(ptrs[2]) == 2 and {n for _, n in ptrs[2]} == {largest[2]}  # grown
    assert ptrs[3] == ptrs[2] and ptrs[4] < ptrs[2] and ptrs[5] == ptrs[2]  # reused, larger than needed too
    assert kept.nbytes == 2 * largest[2]
    st = {}
    assert len(list(live.hf_buckets(shards, dtype="bf16", bucket_bytes=600_000, buffers=kept, stats=st))) == 1
    assert largest[2] <= st["peak_bytes"] <= st["bound_bytes"]  # (the grown buffer counted, and within the bound)
    alone = [p for *_, p, own in calls[5] if own]
    assert len(alone) == 2 and not {a for a, _ in alone} & {a for a, _ in ptrs[2]}  # (embedding, lm_head: their own)
    unpacked = {}
    for b in live.hf_buckets(shards, dtype="keep", bucket_bytes=60_000, buffers=kept):
        unpacked.update((n, t.clone()) for n, t in live.unpack(b))
    assert unpacked.keys() == want.keys() and all(torch.equal(unpacked[n], want[n]) for n in want)
    first = iter(live.hf_buckets(shards, dtype="bf16", bucket_bytes=60_000, buffers=kept))
    next(first)
    with pytest.raises(live.NanokernError, match="in use by an unfinished call"):
        next(iter(live.hf_buckets(shards, dtype="bf16", bucket_bytes=60_000, buffers=kept)))
    first.close()
    crcs = lambda got: [c for _, _, c, _, _ in got]  # noqa: E731
    again = _run(shards, dtype="bf16", bucket_bytes=60_000, buffers=kept)
    assert crcs(again) == crcs(_run(shards, dtype="bf16", bucket_bytes=60_000))
