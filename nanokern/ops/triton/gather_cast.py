"""Triton gather_cast: out[i, :] = cast(src[rows[i], :]).

Works on raw bits with integer operations only (the Triton interpreter truncates on float casts,
and the same arithmetic runs on a GPU): 16-bit tensors are passed as int16 views, fp32 as int32
views. The arithmetic mirrors csrc/include/nanokern/gather_cast.h line for line, NaN policy
included (a NaN stays a quiet NaN of the same sign with its top payload bits).
"""
import triton
import triton.language as tl

from nanokern.io.dtypes import of_torch

F32, BF16, F16 = 0, 1, 2  # kinds, as in nanokern::Kind


@triton.jit
def _to_f32_bits(x, KIND: tl.constexpr):
    """Raw source bits (int32; 16-bit kinds zero-extended) -> fp32 bits (int32), exact."""
    if KIND == 0:
        r = x
    elif KIND == 1:
        r = x << 16
    else:
        sign = (x & 0x8000) << 16
        a = x & 0x7FFF
        e = a >> 10
        m = a & 0x3FF
        normal = (a << 13) + 0x38000000
        # subnormal a * 2^-24: int -> float of a (< 2^10) is exact, then exponent - 24
        sub = a.to(tl.float32).to(tl.int32, bitcast=True) - tl.where(a != 0, 0x0C000000, 0)
        special = 0x7F800000 | (m << 13) | tl.where(m != 0, 0x00400000, 0)
        r = tl.where(e == 0, sub, normal)
        r = tl.where(e == 31, special, r)
        r = sign | r
    return r


@triton.jit
def _from_f32_bits(u, KIND: tl.constexpr):
    """fp32 bits (int32) -> destination bits, round to nearest even (16-bit kinds in [0, 0xFFFF])."""
    if KIND == 0:
        r = u
    elif KIND == 1:
        # int32 wraps where the C++ uint32 does; >> is arithmetic here, hence the & 0xFFFF
        rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF
        nan = ((u >> 16) & 0xFFFF) | 0x0040
        r = tl.where((u & 0x7FFFFFFF) > 0x7F800000, nan, rounded)
    else:
        sign = (u >> 16) & 0x8000
        a = u & 0x7FFFFFFF
        n = a - 0x38000000
        normal = (n + 0x0FFF + ((n >> 13) & 1)) >> 13
        s = tl.minimum(tl.maximum(126 - (a >> 23), 14), 25)
        m = (a & 0x7FFFFF) | 0x800000
        sub = (m + ((1 << (s - 1)) - 1) + ((m >> s) & 1)) >> s
        r = tl.where(a >= 0x38800000, normal, sub)
        r = tl.where(a >= 0x477FF000, 0x7C00, r)
        r = tl.where(a > 0x7F800000, 0x7E00 | ((a >> 13) & 0x3FF), r)
        r = sign | r
    return r


@triton.jit
def gather_cast_kernel(src_ptr, rows_ptr, out_ptr, n_rows, n_cols, src_stride, out_stride,
                       n_col_blocks, HAS_ROWS: tl.constexpr, SRC_KIND: tl.constexpr,
                       DST_KIND: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    pid_r = pid // n_col_blocks
    pid_c = pid % n_col_blocks
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = r < n_rows
    mask = rmask[:, None] & (c < n_cols)[None, :]
    if HAS_ROWS:
        sr = tl.load(rows_ptr + r, mask=rmask, other=0)
    else:
        sr = r.to(tl.int64)
    x = tl.load(src_ptr + (sr[:, None] * src_stride + c[None, :]), mask=mask, other=0)
    if SRC_KIND == DST_KIND:
        y = x
    else:
        if SRC_KIND == 0:
            xb = x
        else:
            xb = x.to(tl.int32) & 0xFFFF
        y = _from_f32_bits(_to_f32_bits(xb, SRC_KIND), DST_KIND)
        if DST_KIND != 0:
            y = y.to(tl.int16)
    tl.store(out_ptr + (r.to(tl.int64)[:, None] * out_stride + c[None, :]), y, mask=mask)


def launch(src, rows, out, config: str | None = None) -> None:
    """Runs the kernel on checked arguments (nanokern/ops/gather_cast_op.py checks them).
    config: the tile set ("cpu": few large programs for the interpreter; "gpu"), by device."""
    import torch

    from nanokern.ops import _triton

    n_rows, n_cols = out.shape
    if n_rows == 0 or n_cols == 0:
        return
    if _triton.tiles(out, config) == "cpu":
        max_c, elems = 1 << 15, 1 << 17
    else:
        max_c, elems = 1024, 4096
    block_c = min(_triton.pow2(n_cols), max_c)
    block_r = max(1, min(elems // block_c, _triton.pow2(n_rows)))
    n_col_blocks = -(-n_cols // block_c)
    grid = (-(-n_rows // block_r) * n_col_blocks,)
    bits = {4: torch.int32, 2: torch.int16}
    with _triton.launch_lock(out):
        gather_cast_kernel[grid](
            src.view(bits[src.element_size()]), rows, out.view(bits[out.element_size()]), n_rows, n_cols,
            src.stride(0), out.stride(0), n_col_blocks,
            HAS_ROWS=rows is not None, SRC_KIND=of_torch(src.dtype).kind, DST_KIND=of_torch(out.dtype).kind,
            BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
        )
