"""The torch-free host kernel (nanokern/ops/host.py, nanokern._cpu) against torch itself: every
dtype pair, row maps, column slices of wider rows, transposed reads, special values; and the
NaN/inf scan the executor runs on every output chunk."""
import numpy as np
import pytest
import torch

from nanokern.io.dtypes import FLOATS
from nanokern.ops import host

pytestmark = pytest.mark.skipif(host.ERROR is not None, reason=str(host.ERROR))

SPECIAL = torch.tensor([0.0, -0.0, 1.0, -1.5, 65504.0, 65520.0, 1e-8, -1e-40, 3.4e38, float("inf"), float("-inf"),
                        1.00390625, 1.01171875, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 5.96e-8])


def _values(n: int, cols: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) * torch.logspace(-9, 9, cols)  # every magnitude: ties, subnormals, overflow
    x.view(-1)[: SPECIAL.numel()] = SPECIAL[: x.numel()]
    return x.to(dtype)


def _np(t: torch.Tensor) -> np.ndarray:
    """The storage-typed numpy view host.py takes (bfloat16 as uint16 bits)."""
    return t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy()


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


@pytest.mark.parametrize("src_dt", [d.torch for d in FLOATS], ids=str)
@pytest.mark.parametrize("dst_dt", [d.torch for d in FLOATS], ids=str)
@pytest.mark.parametrize("gather", [False, True], ids=["range", "rows"])
def test_gather_cast_is_torch_to(src_dt, dst_dt, gather):
    src = _values(40, 300, src_dt, 0)[:, 7:263]  # a column slice: rows wider than the copy
    rows = torch.randperm(40, generator=torch.Generator().manual_seed(1))[:33] if gather else None
    want = (src if rows is None else src[rows]).to(dst_dt)
    big = torch.full((want.shape[0], 400), 7, dtype=dst_dt)  # the output is a slice of wider rows too
    out = big[:, 50:306]
    host.gather_cast(_np(src), None if rows is None else rows.numpy(), _np(out))
    assert torch.equal(_bits(out), _bits(want))
    assert (big[:, :50] == 7).all() and (big[:, 306:] == 7).all()  # nothing outside the slice


def test_large_packed_copy_takes_the_streaming_path_and_is_exact(monkeypatch):
    monkeypatch.setattr(host, "THREADS", 3)  # split across threads, an uneven split, whatever the machine
    src = _values(1024, 4096, torch.float32, 2)  # 16 MB: non-temporal stores
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        out = torch.empty(1024, 4096, dtype=dt)
        host.gather_cast(_np(src), None, _np(out))
        assert torch.equal(_bits(out), _bits(src.to(dt))), dt


@pytest.mark.parametrize("tile", [64, 7])
@pytest.mark.parametrize("src_dt", [d.torch for d in FLOATS], ids=str)
@pytest.mark.parametrize("dst_dt", [d.torch for d in FLOATS], ids=str)
@pytest.mark.parametrize("gather", [False, True], ids=["range", "rows"])
def test_transpose_cast_is_torch_t_to(monkeypatch, tile, src_dt, dst_dt, gather):
    monkeypatch.setattr(host, "TRANSPOSE_TILE", tile)
    stored = _values(150, 260, src_dt, 3)  # [in, out] as experts are stored
    block = stored[10:110]  # the output's columns are these stored rows
    if gather:
        rows = torch.randperm(260, generator=torch.Generator().manual_seed(4))[:90]
        want, row0 = block.t()[rows].to(dst_dt), 0
    else:
        rows, row0 = None, 20
        want = block.t()[20:200].to(dst_dt)
    out = torch.empty(want.shape, dtype=dst_dt)
    host.transpose_cast(_np(block), row0, None if rows is None else rows.numpy(), _np(out))
    assert torch.equal(_bits(out), _bits(want))


def test_large_transposed_copy_is_split_across_threads_and_exact(monkeypatch):
    monkeypatch.setattr(host, "THREADS", 3)  # 3 parts of 5 tiles of columns: uneven
    for src_dt, dt in ((torch.float32, torch.bfloat16), (torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16)):
        stored = _values(300, 1100, src_dt, 6)  # 1100 x 300 output: > 3 x 65536 elements
        out = torch.empty(1100, 300, dtype=dt)
        host.transpose_cast(_np(stored), 0, None, _np(out))
        assert torch.equal(_bits(out), _bits(stored.t().to(dt))), (src_dt, dt)


@pytest.mark.parametrize("dt", [d.torch for d in FLOATS], ids=str)
def test_all_finite_matches_torch(dt):
    x = _values(8, 1000, torch.float32, 5).clamp(-1e4, 1e4).to(dt)
    assert host.all_finite(_np(x)) and bool(torch.isfinite(x).all())
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[5, 999] = bad
        assert not host.all_finite(_np(y)), bad


def test_bad_arguments_are_refused_before_the_kernel():
    src = np.zeros((4, 8), np.float32)
    with pytest.raises(ValueError, match="rows span"):
        host.gather_cast(src, np.array([0, 4], np.int64), np.zeros((2, 8), np.float32))
    with pytest.raises(ValueError, match="contiguous rows"):
        host.gather_cast(src[:, ::2], None, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="not the bits"):
        host.gather_cast(src.astype(np.float64), None, np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="does not fit"):
        host.gather_cast(src, None, np.zeros((3, 8), np.float32))
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros((4, 8), np.float32)
        ro.flags.writeable = False
        host.gather_cast(src, None, ro)
