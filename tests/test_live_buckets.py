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
