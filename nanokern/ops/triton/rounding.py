"""bf16 rounding with integer operations, shared by the Triton kernels of the parity module.

Exact in the Triton interpreter (whose float casts truncate) and the same arithmetic on a GPU.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_bf16(x):
    """fp32 -> the fp32 value of its round-to-nearest-even bf16 (NaN kept)."""
    u = x.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    r = tl.where(x != x, u, r)
    return r.to(tl.float32, bitcast=True)


@triton.jit
def bf16_bits(x):
    """fp32 -> int16 bits of its round-to-nearest-even bf16 (NaN stays a quiet NaN)."""
    u = x.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = tl.where(x != x, (u >> 16) | 0x40, r)
    return r.to(tl.uint16).to(tl.int16, bitcast=True)
