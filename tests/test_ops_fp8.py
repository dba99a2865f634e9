"""gather_quant_fp8 (FP8 128 x 128 block quantization fused into the gather).

- the torch reference against the formula, computed here independently: numpy float32
  operations per block and an e4m3 rounding by nearest value over the 256-entry code table;
- the torch reference against transformers' own quantizer (`Fp8Quantize._quantize_one`);
- every backend (C++ cpu, Triton, CUDA where present, and the torch-free host binding) against the
  torch reference, bit for bit, on random, tied-maximum, all-zero, near-overflow, subnormal,
  NaN and inf blocks, from each source dtype, through row maps and strided views.
"""
import numpy as np
import pytest
import torch

from nanokern.ops import host
from nanokern.ops.fp8_quant import gather_quant_fp8, gather_quant_fp8_torch, quantize_blocks

B = 128
SRC_DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


# ---- the formula, independently -----------------------------------------------------------

def _e4m3_table() -> np.ndarray:
    """The value of every positive finite float8_e4m3fn code 0x00..0x7E (bias 7, 3 mantissa bits)."""
    vals = []
    for code in range(0x7F):
        e, m = code >> 3, code & 7
        vals.append(m / 8 * 2.0 ** -6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return np.array(vals)


TABLE = _e4m3_table()


def e4m3_codes(y: np.ndarray) -> np.ndarray:
    """float32 values in [-448, 448] (or NaN) -> e4m3fn codes: the nearest table value, ties to
    the even code; a NaN is 0x7F with its sign bit."""
    a = np.abs(y.astype(np.float64))
    nan = np.isnan(a)
    a = np.where(nan, 0, a)
    hi = np.clip(np.searchsorted(TABLE, a), 1, len(TABLE) - 1)
    lo = hi - 1
    dl, dh = a - TABLE[lo], TABLE[hi] - a
    code = np.where(dl < dh, lo, np.where(dh < dl, hi, np.where(lo % 2 == 0, lo, hi)))
    code = np.where(a >= TABLE[-1], 0x7E, code)
    code = np.where(nan, 0x7F, code)
    return (code | np.where(np.signbit(y), 0x80, 0)).astype(np.uint8)


def formula(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(e4m3 codes, scale_inv) of a float32 array per 128 x 128 block, as the issue states it."""
    r, c = x.shape
    codes = np.empty((r, c), np.uint8)
    inv = np.empty((r // B, c // B), np.float32)
    with np.errstate(all="ignore"):
        for i in range(r // B):
            for j in range(c // B):
                blk = x[i * B:(i + 1) * B, j * B:(j + 1) * B]
                amax = np.max(np.abs(blk))  # a NaN propagates
                # torch's `448 / tensor` (transformers' spelling) is reciprocal(tensor) * 448
                scale = np.float32(448) * (np.float32(1) / amax) if amax > 0 else np.float32(1)
                inv[i, j] = np.float32(1) / scale
                y = np.clip(blk * scale, np.float32(-448), np.float32(448))
                codes[i * B:(i + 1) * B, j * B:(j + 1) * B] = e4m3_codes(y)
    return codes, inv


def bits(t: torch.Tensor) -> np.ndarray:
    return t.contiguous().view({1: torch.uint8, 4: torch.int32}[t.element_size()]).numpy()


def assert_same(actual, expected, context=""):
    """Same bytes (fp8 codes, scale_inv bits); where both are NaN any NaN code is the same value."""
    for name, a, e in zip(("values", "scale_inv"), actual, expected):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"{context} {name}: shape {a.shape} != {e.shape}"
        differ = a != e
        if name == "values":
            differ &= ~(((a & 0x7F) == 0x7F) & ((e & 0x7F) == 0x7F))
        if differ.any():
            idx = np.argwhere(differ)[:4].tolist()
            raise AssertionError(f"{context} {name}: {int(differ.sum())} of {differ.size} differ, e.g. "
                                 + ", ".join(f"{tuple(i)}: {a[tuple(i)]!r} != {e[tuple(i)]!r}" for i in idx))


# ---- the blocks ---------------------------------------------------------------------------------

def blocks(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """A [384, 640] tensor whose 3 x 5 blocks are the cases (values representable in `dtype`)."""
    g = torch.Generator().manual_seed(seed)
    big = torch.finfo(dtype).max
    tiny = torch.finfo(dtype).smallest_normal

    def rnd(scale=1.0):
        v = torch.randn(B, B, generator=g, dtype=torch.float64) * scale
        return v

    cases = [
        rnd(),                                                                            # random
        rnd() * torch.exp2(torch.randint(-20, 8, (B, B), generator=g).double()),          # many magnitudes
        torch.where(torch.rand(B, B, generator=g) < 0.05, 3.0, -1.0) * torch.sign(rnd()) * 2.5,  # tied max
        torch.zeros(B, B),                                                                # all zero
        -torch.zeros(B, B),                                                               # all -0
        rnd() * big / 6,                                                                  # near overflow
        torch.full((B, B), big).double() * torch.sign(rnd()),                             # at the max
        rnd() * tiny * 4,                                                                 # near the smallest normal
        rnd() * tiny / 64,                                                                # subnormals
        torch.where(torch.rand(B, B, generator=g) < 0.5, 0.0, rnd() * tiny / 8),          # subnormals and zeros
        rnd() * 1e3,                                                                       # e4m3 subnormals below
        torch.where(torch.rand(B, B, generator=g) < 0.01, float("nan"), rnd()),           # NaN
        torch.where(torch.rand(B, B, generator=g) < 0.01, float("inf"), rnd()),           # inf
        torch.where(torch.rand(B, B, generator=g) < 0.01, float("-inf"), torch.zeros(B, B)),  # -inf, zeros
        rnd() * 448,                                                                       # fp8's range
    ]
    x = torch.cat([torch.cat(cases[i * 5:(i + 1) * 5], dim=1) for i in range(3)], dim=0)
    x[-1, -1] = 1e4  # a lone maximum in the last block
    return x.to(torch.float32).to(dtype)


@pytest.mark.parametrize("sdt", SRC_DTYPES, ids=NAMES.get)
def test_reference_is_the_formula(sdt):
    x = blocks(sdt, seed=1)
    q, inv = quantize_blocks(x)
    assert q.dtype == torch.float8_e4m3fn and inv.dtype == torch.float32 and tuple(inv.shape) == (3, 5)
    want_q, want_inv = formula(x.to(torch.float32).numpy())
    assert_same((bits(q), bits(inv)), (want_q, want_inv.view(np.int32)), f"reference vs formula {sdt}")


def test_formula_cases_say_what_they_should():
    """The special blocks give what the formula promises: zero blocks scale 1 and stay zero, a NaN
    block scale 1, an inf block scale_inv inf, the largest value of a block maps to +-448."""
    x = blocks(torch.float32)
    q, inv = quantize_blocks(x)
    qf = q.to(torch.float32)
    assert inv[0, 3] == 1 and inv[0, 4] == 1 and (qf[:B, 3 * B:5 * B] == 0).all()
    assert torch.signbit(qf[:B, 4 * B:5 * B]).all()  # -0 stays -0
    assert inv[2, 1] == 1 and torch.isnan(qf[2 * B:, B:2 * B]).any()
    assert torch.isinf(inv[2, 2])
    assert qf[:B, :B].abs().max() == 448


def test_reference_matches_transformers():
    """transformers' own FineGrainedFP8 quantizer on the same tensors gives the same bits."""
    from types import SimpleNamespace

    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    cfg = SimpleNamespace(weight_block_size=[128, 128], scale_fmt=None)
    theirs = Fp8Quantize(SimpleNamespace(quantization_config=cfg))
    for sdt in SRC_DTYPES:
        for x in (blocks(sdt, seed=3), (torch.randn(256, 384, generator=torch.Generator().manual_seed(4)) * 0.02).to(sdt)):
            got = theirs._quantize_one("layer.weight", x)
            q, inv = quantize_blocks(x)
            assert set(got) == {"layer.weight", "layer.weight_scale_inv"}
            assert_same((bits(q), bits(inv)), (bits(got["layer.weight"]), bits(got["layer.weight_scale_inv"])),
                        f"reference vs transformers {sdt}")


# ---- every backend against the reference ---------------------------------------------------------

def run_backend(device_backend, src, rows, out, scale):
    device, backend = device_backend
    if device == "cpu":
        gather_quant_fp8(src, rows, out, scale, backend=backend)
        return bits(out), bits(scale)
    d_out, d_scale = out.to(device), scale.to(device)
    gather_quant_fp8(src.to(device), None if rows is None else rows.to(device), d_out, d_scale, backend=backend)
    return bits(d_out.cpu()), bits(d_scale.cpu())


def reference(src, rows, n, c):
    out, scale = torch.empty(n, c, dtype=torch.float8_e4m3fn), torch.empty(n // B, c // B)
    gather_quant_fp8_torch(src, rows, out, scale)
    return bits(out), bits(scale)


@pytest.mark.parametrize("sdt", SRC_DTYPES, ids=NAMES.get)
def test_backend_identity(device_backend, sdt):
    src = blocks(sdt, seed=5)
    out, scale = torch.empty(384, 640, dtype=torch.float8_e4m3fn), torch.empty(3, 5)
    assert_same(run_backend(device_backend, src, None, out, scale), reference(src, None, 384, 640),
                f"{device_backend} {sdt}")


@pytest.mark.parametrize("sdt", SRC_DTYPES, ids=NAMES.get)
def test_backend_row_map_and_strided_views(device_backend, sdt):
    """Rows gathered from a bigger source (a permutation across what would be TP shards), columns
    a slice of wider rows, out a slice of a wider buffer."""
    wide = blocks(sdt, seed=6)
    src = torch.cat([wide, wide.flip(0)])[:, 64:64 + 512]  # 768 x 512 of a 768 x 640, stride 640
    rows = torch.randperm(768, generator=torch.Generator().manual_seed(7))[:256]
    buf = torch.zeros(256, 768, dtype=torch.float8_e4m3fn)
    out = buf[:, 128:640]
    scale_buf = torch.zeros(2, 9)
    scale = scale_buf[:, 2:6]
    got = run_backend(device_backend, src, rows, out, scale)
    assert_same(got, reference(src, rows, 256, 512), f"{device_backend} {sdt} row map")
    if device_backend[0] == "cpu":  # nothing written outside the views
        assert (bits(buf)[:, :128] == 0).all() and (bits(buf)[:, 640:] == 0).all()
        assert (scale_buf[:, :2] == 0).all() and (scale_buf[:, 6:] == 0).all()


@pytest.mark.parametrize("sdt", SRC_DTYPES, ids=NAMES.get)
def test_host_binding(sdt):
    """nanokern._cpu (what a CPU conversion runs, without torch) on numpy buffers."""
    if host.ERROR is not None:
        pytest.skip(host.ERROR)
    src = torch.cat([blocks(sdt, seed=8)] * 2)
    rows = torch.randperm(768, generator=torch.Generator().manual_seed(9))[:384]
    store = {torch.float32: np.float32, torch.bfloat16: np.uint16, torch.float16: np.float16}[sdt]
    src_np = src.view({4: torch.int32, 2: torch.int16}[src.element_size()]).numpy().view(store)
    out, scale = np.zeros((384, 640), np.uint8), np.zeros((3, 5), np.float32)
    host.gather_quant_fp8(src_np, rows.numpy(), out, scale)
    assert_same((out, scale.view(np.int32)), reference(src, rows, 384, 640), f"host {sdt}")
    out2, scale2 = np.zeros((384, 640), np.uint8), np.zeros((3, 5), np.float32)
    host.gather_quant_fp8(src_np[:384], None, out2, scale2)
    assert_same((out2, scale2.view(np.int32)), reference(src[:384], None, 384, 640), f"host {sdt} identity")


def test_bad_arguments():
    src = torch.zeros(256, 256)
    with pytest.raises(ValueError, match="multiple of 128"):
        gather_quant_fp8(torch.zeros(100, 256), None, torch.empty(100, 256, dtype=torch.float8_e4m3fn),
                         torch.empty(0, 2))
    with pytest.raises(ValueError, match="scale_inv has shape"):
        gather_quant_fp8(src, None, torch.empty(256, 256, dtype=torch.float8_e4m3fn), torch.empty(1, 2))
    with pytest.raises(ValueError, match="rows values span"):
        gather_quant_fp8(src, torch.full((256,), 256), torch.empty(256, 256, dtype=torch.float8_e4m3fn),
                         torch.empty(2, 2), backend="cpu")


def test_triton_after_triton_was_imported():
    """The Triton kernel runs in the interpreter even when triton was imported before the
    interpreter was switched on (as transformers does): a fresh process, triton imported first."""
    import subprocess
    import sys

    from nanokern.ops import _triton

    if not _triton.importable() or torch.cuda.is_available():
        pytest.skip("needs triton and no CUDA device (the interpreter)")
    code = """
import triton, torch
from nanokern.ops.fp8_quant import gather_quant_fp8, gather_quant_fp8_torch
src = torch.randn(256, 384).bfloat16()
out, s = torch.empty(256, 384, dtype=torch.float8_e4m3fn), torch.empty(2, 3)
ref, rs = torch.empty_like(out), torch.empty_like(s)
gather_quant_fp8(src, None, out, s, backend="triton")
gather_quant_fp8_torch(src, None, ref, rs)
assert torch.equal(out.view(torch.uint8), ref.view(torch.uint8)) and torch.equal(s.view(torch.int32), rs.view(torch.int32))
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
