"""gather_quant_fp8, FP8 block quantization fused into the gather: for every 128 x 128 block of
out, from the gathered source rows src[rows[i], :] widened exactly to float32,

    amax = max |x|;  scale = 448 / amax (1 when amax is 0 or NaN);  scale_inv = 1 / scale
    out = float8_e4m3fn(clamp(x * scale, -448, 448))   (round to nearest even)

each step float32 operations as torch runs them (`448 / amax` is `reciprocal(amax) * 448` in torch,
two roundings; `1 / scale` one): transformers' FineGrainedFP8 quantizer (`Fp8Quantize`,
`_quantize_one`), the DeepSeek-V3 / Qwen3 FP8 format that transformers and vLLM load.

ue8m0=True: power-of-two scales, as that quantizer makes them with `scale_fmt="ue8m0"`: scale_inv
is rounded up to the least power of two >= it (at least 2^-126; NaN where it is inf, as
float8_e8m0fnu stores it), then scale = 1 / scale_inv (exact) quantizes the block. scale_inv
stays float32 here; an e8m0 byte is its exponent field (ue8m0_bytes). The ceiling is exact (on the
bits); transformers' float32 `ceil(log2(x))` keeps 2^k instead where x lies within a few ulps
above 2^k (csrc/include/nanokern/fp8_quant.h says where).

Its home: the argument checks, the torch reference (the oracle of every backend, written as that
quantizer's steps), the dispatch, and the registered ops with their fake kernels:
- torch.ops.nanokern.gather_quant_fp8: the C++ op (csrc/cpu/fp8_quant*.cpp, csrc/cuda/fp8_quant.cu,
  math in csrc/include/nanokern/fp8_quant.h); host.gather_quant_fp8 runs the same kernel without torch;
- torch.ops.nanokern.gather_quant_fp8_triton: the Triton kernel (nanokern/ops/triton/fp8_quant.py).
"""
import torch

from nanokern.ops import _extension, _triton
from nanokern.ops.backends import resolve_backend
from nanokern.ops.gather_cast_op import DTYPES

BLOCK = 128
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def check_meta(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor, scale_inv: torch.Tensor) -> None:
    """Every check that needs no tensor data (the fake kernels run these)."""
    for name, t in (("src", src), ("out", out), ("scale_inv", scale_inv)):
        if t.dim() != 2:
            raise ValueError(f"gather_quant_fp8: {name} must be 2-D, got shape {tuple(t.shape)}")
        if t.size(1) > 1 and t.stride(1) != 1:
            raise ValueError(f"gather_quant_fp8: {name} needs stride(1) == 1, got strides {t.stride()}")
        if t.device != src.device:
            raise ValueError(f"gather_quant_fp8: src is on {src.device} but {name} on {t.device}")
    if src.dtype not in DTYPES:
        raise ValueError(f"gather_quant_fp8: src dtype {src.dtype} is not float32/bfloat16/float16")
    if out.dtype != FP8 or scale_inv.dtype != torch.float32:
        raise ValueError(f"gather_quant_fp8: out must be float8_e4m3fn and scale_inv float32, got {out.dtype}, "
                         f"{scale_inv.dtype}")
    n, c = out.shape
    if n % BLOCK or c % BLOCK:
        raise ValueError(f"gather_quant_fp8: out's shape {tuple(out.shape)} is not a multiple of {BLOCK}")
    if tuple(scale_inv.shape) != (n // BLOCK, c // BLOCK):
        raise ValueError(f"gather_quant_fp8: scale_inv has shape {tuple(scale_inv.shape)}, out "
                         f"{tuple(out.shape)} needs {(n // BLOCK, c // BLOCK)}")
    if src.size(1) != c:
        raise ValueError(f"gather_quant_fp8: src has {src.size(1)} columns but out has {c}")
    if rows is None:
        if src.size(0) != n:
            raise ValueError(f"gather_quant_fp8: without rows, src {tuple(src.shape)} and out {tuple(out.shape)} "
                             "must have the same rows")
        return
    if rows.dim() != 1 or rows.dtype != torch.int64 or rows.size(0) != n or rows.device != src.device:
        raise ValueError(f"gather_quant_fp8: rows must be 1-D int64 on src's device with {n} entries, got "
                         f"{rows.dtype} of shape {tuple(rows.shape)}")


def check(src, rows, out, scale_inv) -> None:
    check_meta(src, rows, out, scale_inv)
    if rows is not None and rows.device.type == "cpu" and rows.numel() > 0:
        lo, hi = int(rows.min()), int(rows.max())
        if lo < 0 or hi >= src.size(0):
            raise ValueError(f"gather_quant_fp8: rows values span [{lo}, {hi}] but src has {src.size(0)} rows")


def ue8m0_ceil(s: torch.Tensor) -> torch.Tensor:
    """float32 s >= 0 -> the least power of two >= s (0 and subnormals: 2^-126), NaN for inf: the
    exponent field, plus one where any mantissa bit is set."""
    u = s.contiguous().view(torch.int32) & 0x7FFFFFFF
    e = u >> 23
    r = e + ((u & 0x7FFFFF) != 0).to(torch.int32)
    bits = torch.where(e == 0, 1 << 23, torch.where(r >= 255, 0x7FC00000, r << 23)).to(torch.int32)
    return bits.view(torch.float32)


def ue8m0_bytes(scale_inv: torch.Tensor) -> torch.Tensor:
    """float8_e8m0fnu bits (uint8) of ue8m0 float32 scales (powers of two or NaN): the exponent field."""
    return ((scale_inv.contiguous().view(torch.int32) >> 23) & 0xFF).to(torch.uint8)


def quantize_blocks(x: torch.Tensor, ue8m0: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn values, float32 scale_inv [R/128, C/128]) of a 2-D tensor: the quantizer's
    steps in torch, one float32 operation each (ue8m0: its power-of-two scales)."""
    r, c = x.shape
    v = x.to(torch.float32).reshape(r // BLOCK, BLOCK, c // BLOCK, BLOCK)
    amax = v.abs().amax(dim=(1, 3))
    ones = torch.ones_like(amax)
    scale = FP8_MAX / torch.where(amax > 0, amax, ones)
    scale = torch.where(amax > 0, scale, ones)  # all zero (or a NaN): 1
    scale_inv = (1.0 / scale).to(torch.float32)
    if ue8m0:
        scale_inv = ue8m0_ceil(scale_inv)
        scale = 1.0 / scale_inv  # exact (a power of two, or NaN)
    q = torch.clamp(v * scale[:, None, :, None], min=-FP8_MAX, max=FP8_MAX).to(FP8)
    return q.reshape(r, c), scale_inv


def gather_quant_fp8_torch(src, rows, out, scale_inv, ue8m0: bool = False) -> None:
    """The reference: torch's own gather, then the quantizer's steps."""
    q, s = quantize_blocks(src if rows is None else src.index_select(0, rows), ue8m0)
    out.copy_(q)
    scale_inv.copy_(s)


@torch.library.custom_op("nanokern::gather_quant_fp8_triton", mutates_args=("out", "scale_inv"),
                         schema="(Tensor src, Tensor? rows, Tensor(a!) out, Tensor(b!) scale_inv, bool ue8m0=False) -> ()")
def gather_quant_fp8_triton(src, rows, out, scale_inv, ue8m0: bool = False) -> None:
    check(src, rows, out, scale_inv)
    _triton.kernels("fp8_quant").launch(src, rows, out, scale_inv, ue8m0)


def _fake(src, rows, out, scale_inv, ue8m0=False) -> None:
    check_meta(src, rows, out, scale_inv)


gather_quant_fp8_triton.register_fake(_fake)
if _extension.CPU_ERROR is None:
    torch.library.register_fake("nanokern::gather_quant_fp8")(_fake)


def gather_quant_fp8(src: torch.Tensor, rows: torch.Tensor | None, out: torch.Tensor, scale_inv: torch.Tensor,
                     backend: str = "torch", ue8m0: bool = False) -> None:
    """out = float8_e4m3fn of src[rows] per 128 x 128 block, scale_inv[i, j] = 1 / block (i, j)'s
    scale (rows None: src itself). src: 2-D float32/bfloat16/float16, stride(1) == 1, any row stride;
    out: float8_e4m3fn [n, C], scale_inv: float32 [n/128, C/128], n and C multiples of 128.
    backend: "auto", "torch", "cpu", "cuda", "triton"; all give the same bits. ue8m0: power-of-two
    scales (the module's docstring), still float32 in scale_inv."""
    check(src, rows, out, scale_inv)
    name = resolve_backend(backend, src.device, "gather_quant_fp8")
    if rows is not None and not rows.is_contiguous():
        rows = rows.contiguous()
    if name == "torch":
        gather_quant_fp8_torch(src, rows, out, scale_inv, ue8m0)
    elif name == "triton":
        gather_quant_fp8_triton(src, rows, out, scale_inv, ue8m0)
    else:
        torch.ops.nanokern.gather_quant_fp8(src, rows, out, scale_inv, ue8m0)
