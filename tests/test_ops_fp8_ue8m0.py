"""gather_quant_fp8 with ue8m0 (power-of-two) scales, transformers' `scale_fmt="ue8m0"`.

- the torch reference against the formula computed here independently: numpy float32 operations
  per block, the power of two found with Python's exact math.frexp, e4m3 rounding by table;
- the reference against transformers' own quantizer (`Fp8Quantize` with scale_fmt="ue8m0") on
  every block where float32 log2 cannot land on an integer it does not reach (away from powers of
  two, or exactly on one); next to a power of two the reference takes the exact ceiling (tested
  against the formula), where transformers' float32 log2 may keep the power below;
- every backend against the reference, bit for bit, on the same cases (random, tied maximum,
  zero, near overflow, subnormal, NaN, inf, and scale_inv a few ulps above/below powers of two).
"""
import math

import numpy as np
import pytest
import torch
from marks import slow_except
from test_ops_fp8 import B, NAMES, SRC_DTYPES, assert_same, bits, blocks, e4m3_codes

from nanokern.ops import host
from nanokern.ops.fp8_quant import gather_quant_fp8, gather_quant_fp8_torch, quantize_blocks, ue8m0_bytes

F32 = np.float32


def scale_inv_float(amax: np.float32) -> np.float32:
    """The float path's scale_inv of a block with this max |x| (transformers' float32 steps)."""
    with np.errstate(all="ignore"):
        scale = F32(448) * (F32(1) / amax) if amax > 0 else F32(1)
        return F32(1) / scale


def pow2_at_least(s: np.float32) -> np.float32:
    """The least power of two >= max(s, 2^-126), exactly (NaN for inf: e8m0 has no infinity)."""
    if math.isinf(s):
        return F32("nan")
    m, e = math.frexp(max(float(s), 2.0 ** -126))  # s = m 2^e, m in [0.5, 1)
    return F32(2.0 ** (e - 1) if m == 0.5 else 2.0 ** e)


def formula(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(e4m3 codes, ue8m0 scale_inv as float32, the float path's scale_inv) per 128 x 128 block."""
    r, c = x.shape
    codes = np.empty((r, c), np.uint8)
    inv = np.empty((r // B, c // B), F32)
    plain = np.empty_like(inv)
    with np.errstate(all="ignore"):
        for i in range(r // B):
            for j in range(c // B):
                blk = x[i * B:(i + 1) * B, j * B:(j + 1) * B]
                plain[i, j] = scale_inv_float(np.max(np.abs(blk)))
                inv[i, j] = pow2_at_least(plain[i, j])
                y = np.clip(blk * (F32(1) / inv[i, j]), F32(-448), F32(448))
                codes[i * B:(i + 1) * B, j * B:(j + 1) * B] = e4m3_codes(y)
    return codes, inv, plain


def edge_amaxes(k: int) -> list[np.float32]:
    """float32 amaxes whose float-path scale_inv is exactly 2^k, the least value above it, the
    third above (mantissa 1..3 ulps: the ceiling doubles, where a float32 log2 may stay at k),
    and the greatest below it (stays at 2^k), among the neighbours of 448 2^k."""
    a0 = F32(448 * 2.0 ** k)
    amax = (float(a0) + np.arange(-3000, 3000) * float(np.spacing(a0))).astype(F32)
    with np.errstate(all="ignore"):
        s = F32(1) / (F32(448) * (F32(1) / amax))
    p = F32(2.0 ** k)
    above, below = np.unique(s[s > p]), np.unique(s[s < p])
    picks = [p, above[0], above[2], below[-1]]
    assert (above[2].view(np.int32) & 0x7FFFFF) <= 3 and p in s, (k, above[:3], below[-3:])
    return [amax[np.flatnonzero(s == t)[0]] for t in picks]


EDGE_K = (-20, -10, -8, -1, 3)


def edge_blocks(seed: int = 0) -> torch.Tensor:
    """[128, 128 x 20] float32 blocks whose scale_inv are at, above and below powers of two
    (float32 source only: the amax must be exact)."""
    g = torch.Generator().manual_seed(seed)
    cols = []
    for a in [float(a) for k in EDGE_K for a in edge_amaxes(k)]:
        blk = (torch.rand(B, B, generator=g, dtype=torch.float64) * 2 - 1) * a
        blk[seed % B, 7] = -a  # the maximum, once
        cols.append(blk.clamp(-a, a))
    return torch.cat(cols, dim=1).to(torch.float32)


def cases(sdt: torch.dtype, seed: int) -> torch.Tensor:
    x = blocks(sdt, seed)  # 3 x 5 blocks: random, tied maximum, zero, near overflow, subnormal, NaN, inf...
    if sdt != torch.float32:
        return x
    e = edge_blocks(seed)  # 20 edge blocks -> 4 rows of 5
    return torch.cat([x, *[e[:, k * 5 * B:(k + 1) * 5 * B] for k in range(4)]], dim=0)


@pytest.mark.parametrize("sdt", slow_except(SRC_DTYPES, [torch.float32]), ids=NAMES.get)
def test_reference_is_the_formula(sdt):
    x = cases(sdt, seed=1)
    q, inv = quantize_blocks(x, ue8m0=True)
    want_q, want_inv, _ = formula(x.to(torch.float32).numpy())
    assert_same((bits(q), bits(inv)), (want_q, want_inv.view(np.int32)), f"ue8m0 reference vs formula {sdt}")


def test_cases_say_what_they_should():
    """Zero and NaN blocks: scale_inv 1 (e8m0 127); an inf block: NaN (e8m0 255) and NaN values;
    subnormal blocks: 2^-126 (e8m0 1); every finite scale_inv a power of two >= the float one, less
    than twice it; exact powers kept, one ulp above one doubled; the block maximum at most 448."""
    x = cases(torch.float32, seed=2)
    q, inv = quantize_blocks(x, ue8m0=True)
    _, plain = quantize_blocks(x)
    e8 = ue8m0_bytes(inv)
    assert e8[0, 3] == 127 and e8[0, 4] == 127 and e8[2, 1] == 127
    assert e8[2, 2] == 255 and torch.isnan(inv[2, 2]) and torch.isnan(q[2 * B:3 * B, 2 * B:3 * B].float()).all()
    assert e8[1, 3] == 1 and inv[1, 3] == 2.0 ** -126
    fin = torch.isfinite(plain) & (plain >= 2.0 ** -126)  # (below: the clamp to 2^-126, checked above)
    m, _ = torch.frexp(inv[fin])
    assert (m == 0.5).all() and (inv[fin] >= plain[fin]).all() and (inv[fin] < 2 * plain[fin]).all()
    for k, (got, was) in enumerate(zip(inv[3:].flatten().tolist(), plain[3:].flatten().tolist())):
        p = 2.0 ** EDGE_K[k // 4]
        assert got == (p if k % 4 in (0, 3) else 2 * p), (k, was, got)  # at, above, above, below 2^k
    assert q[:B, :B].float().abs().max() <= 448


def _near_power(s: torch.Tensor) -> torch.Tensor:
    """Where float32 log2(s) could round onto an integer it does not reach: s within 2^-15 relative
    of a power of two (the window is below 2^-18, plus a 1-ulp log2), but not exactly one."""
    m, _ = torch.frexp(s.double())
    rel = torch.minimum((2 * m - 1).abs(), (1 - m).abs() * 2)
    return torch.isfinite(s) & (s > 0) & (rel > 0) & (rel < 2.0 ** -15)


def test_reference_matches_transformers():
    """transformers' Fp8Quantize(scale_fmt="ue8m0") gives the same e4m3 bits and e8m0 bytes on every
    block away from the edge of a power of two; the edge blocks (built for it) are the only ones left out."""
    from types import SimpleNamespace

    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    theirs = Fp8Quantize(SimpleNamespace(quantization_config=SimpleNamespace(weight_block_size=[128, 128], scale_fmt="ue8m0")))
    for sdt in SRC_DTYPES:
        for x in (cases(sdt, seed=3), (torch.randn(256, 384, generator=torch.Generator().manual_seed(4)) * 0.02).to(sdt)):
            got = theirs._quantize_one("layer.weight", x)
            assert got["layer.weight_scale_inv"].dtype == torch.float8_e8m0fnu
            q, inv = quantize_blocks(x, ue8m0=True)
            _, plain = quantize_blocks(x)
            skip = _near_power(plain)
            if sdt == torch.float32 and x.shape[0] > 3 * B:
                want_skip = torch.zeros_like(skip)
                want_skip[3:] = torch.tensor([k % 4 != 0 for k in range(20)]).reshape(4, 5)  # not the exact powers
                assert torch.equal(skip, want_skip), skip
            else:
                assert not skip.any(), skip
            keep = (~skip).repeat_interleave(B, 0).repeat_interleave(B, 1)
            tq = torch.where(keep, got["layer.weight"].view(torch.uint8), q.view(torch.uint8))
            te8 = torch.where(~skip, got["layer.weight_scale_inv"].view(torch.uint8), ue8m0_bytes(inv))
            assert_same((tq.numpy(), te8.numpy()), (bits(q), ue8m0_bytes(inv).numpy()), f"ue8m0 vs transformers {sdt}")


def reference(src, rows, n, c):
    out, scale = torch.empty(n, c, dtype=torch.float8_e4m3fn), torch.empty(n // B, c // B)
    gather_quant_fp8_torch(src, rows, out, scale, ue8m0=True)
    return bits(out), bits(scale)


@pytest.mark.parametrize("sdt", slow_except(SRC_DTYPES, [torch.float32]), ids=NAMES.get)
def test_backend_identity(device_backend, sdt):
    """Every backend, through a row map from a bigger source that keeps each case's rows together
    (its blocks in another order, their rows shuffled), on every case."""
    device, backend = device_backend
    wide = cases(sdt, seed=5)
    n, c = wide.shape
    src = torch.cat([wide.flip(0), wide])
    g = torch.Generator().manual_seed(6)
    order = torch.randperm(n // B, generator=g) + n // B  # (the second copy: rows n..2n)
    rows = torch.cat([b * B + torch.randperm(B, generator=g) for b in order.tolist()])
    out, scale = torch.empty(n, c, dtype=torch.float8_e4m3fn, device=device), torch.empty(n // B, c // B, device=device)
    gather_quant_fp8(src.to(device), rows.to(device), out, scale, backend=backend, ue8m0=True)
    assert_same((bits(out.cpu()), bits(scale.cpu())), reference(src, rows, n, c), f"ue8m0 {device_backend} {sdt}")


def test_host_binding():
    """nanokern._cpu (what a CPU conversion runs, without torch) with ue8m0 on numpy buffers."""
    if host.ERROR is not None:
        pytest.skip(host.ERROR)
    src = cases(torch.float32, seed=8)
    n, c = src.shape
    out, scale = np.zeros((n, c), np.uint8), np.zeros((n // B, c // B), np.float32)
    host.gather_quant_fp8(src.numpy(), None, out, scale, ue8m0=True)
    assert_same((out, scale.view(np.int32)), reference(src, None, n, c), "host ue8m0")
