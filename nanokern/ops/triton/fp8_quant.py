"""Triton gather_quant_fp8: one program per 128 x 128 block of out, from src[rows[i], :].

The arithmetic of csrc/include/nanokern/fp8_quant.h: amax as an integer max of |x| bit patterns
(a NaN is the largest), scale = 448 * (1 / amax) and scale_inv = 1 / scale, the divisions correctly
rounded (div_rn: a plain `/` is an approximate division on a GPU), x * scale clamped to +-448, then rounded to
float8_e4m3fn with integer operations (the interpreter truncates on float casts). UE8M0: scale_inv
rounded up to a power of two on its bits (NaN for inf) and scale = 1 / that, as fp8_ue8m0 there.
"""
import triton
import triton.language as tl

from nanokern.io.dtypes import of_torch
from nanokern.ops.triton.gather_cast import _to_f32_bits


@triton.jit
def _e4m3_bits(u):
    """fp32 bits (int32) -> float8_e4m3fn bits in [0, 255], round to nearest even (>= 480: NaN 0x7F)."""
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    normal = (a - (120 << 23) + 0x7FFFF + ((a >> 20) & 1)) >> 20
    s = tl.minimum(tl.maximum(141 - (a >> 23), 21), 25)
    m = (a & 0x7FFFFF) | 0x800000
    sub = (m + ((1 << (s - 1)) - 1) + ((m >> s) & 1)) >> s
    r = tl.where(a >= (121 << 23), normal, sub)
    r = tl.where(a >= 0x43F00000, 0x7F, r)
    return sign | r


@triton.jit
def gather_quant_fp8_kernel(src_ptr, rows_ptr, out_ptr, scale_ptr, n_col_blocks, src_stride, out_stride,
                            scale_stride, HAS_ROWS: tl.constexpr, SRC_KIND: tl.constexpr, UE8M0: tl.constexpr,
                            BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    br = pid // n_col_blocks
    bc = pid % n_col_blocks
    r = br * BLOCK + tl.arange(0, BLOCK)
    c = bc * BLOCK + tl.arange(0, BLOCK)
    if HAS_ROWS:
        sr = tl.load(rows_ptr + r)
    else:
        sr = r.to(tl.int64)
    x = tl.load(src_ptr + (sr[:, None] * src_stride + c[None, :]))
    if SRC_KIND == 0:
        xb = x
    else:
        xb = x.to(tl.int32) & 0xFFFF
    u = _to_f32_bits(xb, SRC_KIND)
    # = tl.max twice (tl.max is a @triton.jit function: it fails in the interpreter once triton was
    # imported before the interpreter was switched on, tl.reduce does not; see attention.py)
    amax = tl.reduce(tl.reduce(u & 0x7FFFFFFF, 1, tl.standard._elementwise_max), 0, tl.standard._elementwise_max)
    one = (amax == 0) | (amax > 0x7F800000)
    amax_f = tl.where(one, 0x3F800000, amax).to(tl.float32, bitcast=True)
    scale = tl.where(one, 1.0, tl.math.div_rn(tl.full([], 1.0, tl.float32), amax_f) * 448.0)
    inv = tl.math.div_rn(tl.full([], 1.0, tl.float32), scale)
    if UE8M0:
        ib = inv.to(tl.int32, bitcast=True) & 0x7FFFFFFF
        e = ib >> 23
        rb = e + tl.where((ib & 0x7FFFFF) != 0, 1, 0)
        pb = tl.where(e == 0, 1 << 23, tl.where(rb >= 255, 0x7FC00000, rb << 23))
        inv = pb.to(tl.float32, bitcast=True)
        scale = tl.math.div_rn(tl.full([], 1.0, tl.float32), inv)
    y = u.to(tl.float32, bitcast=True) * scale
    y = tl.where(y > 448.0, 448.0, tl.where(y < -448.0, -448.0, y))
    q = _e4m3_bits(y.to(tl.int32, bitcast=True))
    tl.store(out_ptr + (r.to(tl.int64)[:, None] * out_stride + c[None, :]), q.to(tl.uint8))
    tl.store(scale_ptr + br * scale_stride + bc, inv)


def launch(src, rows, out, scale_inv, ue8m0: bool = False) -> None:
    """Runs the kernel on checked arguments (nanokern/ops/fp8_quant.py checks them)."""
    import torch

    from nanokern.ops import _triton

    n_rows, n_cols = out.shape
    if n_rows == 0 or n_cols == 0:
        return
    n_col_blocks = n_cols // 128
    bits = {4: torch.int32, 2: torch.int16}
    with _triton.launch_lock(out):
        gather_quant_fp8_kernel[((n_rows // 128) * n_col_blocks,)](
            src.view(bits[src.element_size()]), rows, out.view(torch.uint8), scale_inv, n_col_blocks,
            src.stride(0), out.stride(0), scale_inv.stride(0),
            HAS_ROWS=rows is not None, SRC_KIND=of_torch(src.dtype).kind, UE8M0=bool(ue8m0), BLOCK=128, num_warps=4,
        )
