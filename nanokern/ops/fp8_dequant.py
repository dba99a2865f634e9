"""FP8 block dequantization, the inverse of ops/fp8_quant.py: for every block (i, j) of a
float8_e4m3fn weight q and its scale grid s (`weight_scale_inv`, one value per br x bc block),

    out[r, c] = float32(q[r, c]) * float32(s[r // br, c // bc])     (one float32 product, rounded once)

then a cast to the wanted dtype: transformers' `Fp8Dequantize._dequantize_one` (`(q * s).to(dtype)`),
DeepSeek-V3's `weight_dequant`. Edge blocks follow the scale grid's shape: a weight of R x C rows
and columns has a ceil(R/br) x ceil(C/bc) grid, and its last blocks are partial (transformers'
CPU path instead infers br = R / grid rows, which for a partial grid is not the block the scales
were made for; nanokern keeps the config's block size).

Scales are read as transformers reads them: float32, bfloat16 or float16 widened exactly; one
byte per block (uint8 or float8_e8m0fnu, `scale_fmt: ue8m0`) as 2^(byte - 127) (byte 255: NaN).

Two implementations that give the same bits: `dequantize_torch` (the reference, torch's own
cast and multiply) and `gather_dequant` (numpy, no torch: the e4m3 bytes' exact float32 values from
a 256-entry table, numpy's float32 multiply, IEEE round to nearest even; `dequantize_host` is it
over a whole weight in float32). `gather_dequant` is what an import runs (execute/fill.py): a row gather of a window of the weight
dequantized and cast in one step, `out[i, j] = cast(e4m3(q[r_i, c0 + j]) * s[r_i // br, (c0 + j) // bc])`:
each block's 256 possible products are made in float32 and cast once (a table of 256 output values
per block), and every element is one lookup in its block's table, so the output holds exactly the
reference's `(q * s).to(dtype)`, one float32 product and one rounding. `rounding_bound` is how far
a dequantized value may be from the value that was quantized (its derivation is in its docstring).
"""
from __future__ import annotations

import numpy as np

E4M3_MAX = 448.0
MANTISSA_BITS = 3  # e4m3: 1 implicit + 3 stored bits
MIN_NORMAL = 2.0 ** -6  # smallest normal e4m3 (exponent bias 7)
SUBNORMAL_STEP = 2.0 ** -9  # spacing of e4m3's subnormals (and of its smallest binade)


def _e4m3_table() -> np.ndarray:
    """float32 value of each e4m3fn byte (sign, 4 exponent bits with bias 7, 3 mantissa bits; no
    infinities; S.1111.111 is NaN, given torch's float32 bits for it, 0x7ff00000 with the sign):
    exact, every e4m3 value is a float32."""
    b = np.arange(256, dtype=np.int64)
    sign = np.where(b & 0x80, -1.0, 1.0)
    e, m = (b >> 3) & 0xF, b & 0x7
    mag = np.where(e == 0, m * SUBNORMAL_STEP, (1.0 + m / 8.0) * np.exp2(e - 7.0))
    out = (sign * mag).astype(np.float32)
    out.view(np.uint32)[(e == 15) & (m == 7)] = np.where(sign < 0, 0xFFF00000, 0x7FF00000)[(e == 15) & (m == 7)]
    return out


E4M3_TABLE = _e4m3_table()


def scales_host(raw: np.ndarray) -> np.ndarray:
    """float32 scales from the stored ones (numpy: float32/float16 as themselves, bfloat16 as its
    <u2 bits, one byte per block as an e8m0 exponent)."""
    if raw.dtype == np.float32:
        return raw
    if raw.dtype == np.float16:
        return raw.astype(np.float32)  # exact
    if raw.dtype == np.dtype("<u2"):  # bfloat16 bits: the upper half of a float32
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if raw.dtype == np.uint8:
        out = np.ldexp(np.float32(1.0), raw.astype(np.int32) - 127).astype(np.float32)
        return np.where(raw == 255, np.float32(np.nan), out).astype(np.float32)
    raise ValueError(f"fp8_dequant: scales of dtype {raw.dtype} (expected float32, bfloat16, float16 or one byte)")


def _check(shape: tuple[int, int], grid: tuple[int, ...], block: tuple[int, int]) -> None:
    r, c = shape
    br, bc = block
    want = (-(-r // br), -(-c // bc))
    if tuple(grid) != want:
        raise ValueError(f"fp8_dequant: a {r} x {c} weight in {br} x {bc} blocks needs a {want[0]} x {want[1]} scale grid, "
                         f"got {tuple(grid)}")


def _expand(s, block: tuple[int, int], shape: tuple[int, int], repeat):
    """The scale of every element: each grid value over its br x bc block, cut to the weight's
    shape (the partial edge blocks)."""
    br, bc = block
    r, c = shape
    return repeat(repeat(s, br, 0)[:r], bc, 1)[:, :c]


def block_scales(s, block: tuple[int, int], shape: tuple[int, int]):
    """The scale of every element of a weight (torch), from its float32 grid."""
    return _expand(s, block, shape, lambda a, n, ax: a.repeat_interleave(n, dim=ax))


def dequantize_host(bits: np.ndarray, scales: np.ndarray, block: tuple[int, int]) -> np.ndarray:
    """float32 [R, C] from e4m3 bytes [R, C] (uint8) and float32 scales [ceil(R/br), ceil(C/bc)]:
    gather_dequant over the whole weight (its float32 tables copied as they are)."""
    _check(bits.shape, scales.shape, block)
    out = np.empty(bits.shape, np.float32)
    gather_dequant(bits, scales, block, None, 0, 0, out, lambda src, dst: np.copyto(dst, src))
    return out


STEP_ELEMS = 1 << 19  # output elements (and table entries) per step of gather_dequant


def gather_dequant(q: np.ndarray, scales: np.ndarray, block: tuple[int, int], rows: np.ndarray | None, row0: int,
                   col0: int, out: np.ndarray, cast) -> None:
    """out[i, j] = cast(E4M3_TABLE[q[r_i, col0 + j]] * scales[r_i // br, (col0 + j) // bc]), r_i =
    rows[i] (rows None: row0 + i). q: e4m3 bytes (uint8, any strides: a transposed view reads the
    transpose, with its grid and block transposed too); scales: the float32 grid; out: [n, ncols]
    in the output dtype's storage type; cast(src, dst): float32 [k, 256] -> dst's dtype, round to
    nearest even (the conversion's gather_cast). Steps of at most STEP_ELEMS elements, whose blocks'
    tables hold at most STEP_ELEMS entries (fewer rows when gathered rows fall in many row blocks):
    scratch at most STEP_ELEMS x (8 index + 4 float32 + 4 output) bytes, 8 MiB, whatever the sizes."""
    br, bc = block
    n, ncols = out.shape
    if n == 0 or ncols == 0:
        return
    gcol = (col0 + np.arange(ncols, dtype=np.intp)) // bc
    g0, g1 = int(gcol[0]), int(gcol[-1]) + 1
    colbase = (gcol - g0) * 256  # position of each column's table among its row block's
    step = max(1, STEP_ELEMS // ncols)
    idx = np.empty((min(step, n), ncols), np.intp)
    i0 = 0
    while i0 < n:
        i1 = min(n, i0 + step)
        while True:
            src = np.arange(row0 + i0, row0 + i1) if rows is None else rows[i0:i1]
            used, inv = np.unique(src // br, return_inverse=True)
            if i1 - i0 == 1 or used.size * (g1 - g0) * 256 <= STEP_ELEMS:
                break
            i1 = i0 + (i1 - i0) // 2
        tab32 = np.multiply(E4M3_TABLE, scales[used, g0:g1][:, :, None], dtype=np.float32)  # every product, once
        tab = np.empty(tab32.shape, out.dtype)
        cast(tab32.reshape(-1, 256), tab.reshape(-1, 256))
        bits = q[row0 + i0 : row0 + i1, col0 : col0 + ncols] if rows is None else q[src, col0 : col0 + ncols]
        ix = idx[: i1 - i0]
        np.add(colbase, bits, out=ix)
        if used.size > 1:
            ix += (inv.reshape(-1, 1) * ((g1 - g0) * 256)).astype(np.intp)
        np.take(tab.reshape(-1), ix, out=out[i0:i1], mode="clip")  # (all in range; "raise" would buffer)
        i0 = i1


def dequantize_torch(q, scale_inv, block: tuple[int, int], dtype=None):
    """The reference: float32 of q times its block's scale in float32, then `.to(dtype)` (float32
    when None). q: float8_e4m3fn [R, C]; scale_inv: [ceil(R/br), ceil(C/bc)], any float dtype
    (widened exactly), or uint8 e8m0 exponents."""
    import torch

    _check(tuple(q.shape), tuple(scale_inv.shape), block)
    if scale_inv.dtype == torch.uint8 or str(scale_inv.dtype) == "torch.float8_e8m0fnu":
        b = scale_inv.view(torch.uint8)
        s = torch.ldexp(torch.ones(b.shape, dtype=torch.float32), b.to(torch.int32) - 127)
        s = torch.where(b == 255, torch.full_like(s, float("nan")), s)
    else:
        s = scale_inv.to(torch.float32)
    out = q.to(torch.float32) * block_scales(s, block, tuple(q.shape))
    return out if dtype is None else out.to(dtype)


def rounding_bound(x_abs, scale_inv, np_mod=np):
    """How far dequantize(quantize(x)) may be from x, per element (x_abs = |x|, scale_inv the
    element's block scale as stored, both float32 arrays; np_mod: numpy or torch):

        |d - x| <= (2^-4 + 2^-21) |x| + (2^-10 + 2^-30) scale_inv

    Derivation, for the quantizer of ops/fp8_quant.py (s = 448 / amax, scale_inv = fl(1 / s), q =
    e4m3(clamp(fl(x s))), d = fl(q scale_inv)); fl() rounds to float32, relative error <= u = 2^-24:
    - y = fl(x s) = x s (1 + e1), |e1| <= u.
    - q = e4m3(y), to nearest: e4m3 has 3 stored mantissa bits, so in its normal range
      (|y| >= 2^-6) neighbours are 2^-3 |y| apart at most and |q - y| <= 2^-4 |y|; below 2^-6 the
      subnormals are 2^-9 apart, |q - y| <= 2^-10. Both: |q - y| <= 2^-4 |y| + 2^-10. The clamp
      to +-448 only moves a y that rounding pushed past amax s = 448 (by u relative), within that.
    - scale_inv = (1 / s)(1 + e2), d = q scale_inv (1 + e3), |e2|, |e3| <= u.
    So d - x = x [(1 + e1)(1 + e2)(1 + e3) - 1] + (q - y) scale_inv (1 + e3), and with
    |y| scale_inv <= |x| (1 + u)^2:  |d - x| <= 3.01u |x| + 2^-4 (1 + u)^3 |x| + 2^-10 (1 + u) scale_inv,
    under the bound above. Where x itself was rounded (a bf16 twin of a float32 source) add
    that dtype's rounding; where the scale was rounded to a power of two (ue8m0) the same
    derivation holds with scale_inv as stored. The same bound makes a forward's weights within
    2^-4 relative of the checkpoint's (the normal range), which is what parity states.
    """
    return (2.0 ** -4 + 2.0 ** -21) * x_abs + (2.0 ** -10 + 2.0 ** -30) * scale_inv
