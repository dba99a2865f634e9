"""gather_cast numerics: every backend vs torch's own casts on edge values, every 16-bit pattern,
the values around every rounding midpoint, random bit patterns; NaN bits identical across
backends."""
import pytest
import torch
from marks import slow_except

from nanokern.ops import available_backends, gather_cast
from nanokern.ops.testing import assert_same_bits, raw_bits

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
INT = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def from_bits(bits, dtype):
    """Float tensor with the given bit patterns (python ints or an int64 tensor)."""
    b = torch.as_tensor(bits, dtype=torch.int64)
    if dtype == torch.float32:
        b = torch.where(b >= 2**31, b - 2**32, b)
    else:
        b = torch.where(b >= 2**15, b - 2**16, b)
    return b.to(INT[dtype]).view(dtype)


def run(device_backend, src, dtype):
    """gather_cast of a 1-D src into a new `dtype` tensor, as [rows, cols] with a reversed row map."""
    device, backend = device_backend
    n = src.numel()
    cols = 1024 if n % 1024 == 0 else n
    s2 = src.reshape(-1, cols).to(device)
    rows = torch.arange(s2.size(0) - 1, -1, -1, device=device)
    out = torch.empty(s2.shape, dtype=dtype, device=device)
    gather_cast(s2, rows, out, backend=backend)
    return out.flip(0).reshape(-1).cpu()


def check(device_backend, src, dtype, context):
    assert_same_bits(run(device_backend, src, dtype), src.to(dtype), nan_payload=False,
                     context=f"{device_backend} {NAMES[src.dtype]}->{NAMES[dtype]} {context}")


F32_EDGES = [
    0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # +-0, +-inf
    0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFBFFFFF, 0x7FA12345,  # NaNs (quiet, signalling)
    0x7F7FFFFF, 0xFF7FFFFF, 0x00800000, 0x00000001, 0x807FFFFF,  # max finite, min normal, subnormals
    0x3F808000, 0x3F818000, 0x3F808001, 0x3F807FFF, 0x7F7F8000, 0x7F7F7FFF,  # bf16 ties / overflow
    0x477FE000, 0x477FEFFF, 0x477FF000, 0xC77FF000, 0x47800000, 0x4F000000,  # fp16 max / overflow
    0x38800000, 0x387FC000, 0x387FE000, 0x33800000, 0x33000000, 0x33000001,  # fp16 normal/subnormal
    0x33C00000, 0x34200000, 0x32FFFFFF, 0x3F801000, 0x3F803000, 0x3F801001,  # fp16 ties
]
# (fp32 bits, bf16 bits, fp16 bits) computed by hand: a check that does not lean on torch
BY_HAND = [
    (0x3F808000, 0x3F80, 0x3C04), (0x3F818000, 0x3F82, 0x3C0C), (0x7F7FFFFF, 0x7F80, 0x7C00),
    (0x477FF000, 0x4780, 0x7C00), (0x477FEFFF, 0x4780, 0x7BFF), (0x33000000, 0x3300, 0x0000),
    (0x33000001, 0x3300, 0x0001), (0x33C00000, 0x33C0, 0x0002), (0x387FE000, 0x3880, 0x0400),
    (0x3F801000, 0x3F80, 0x3C00), (0x3F803000, 0x3F80, 0x3C02), (0x80000001, 0x8000, 0x8000),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=NAMES.get)
def test_f32_edge_values(device_backend, dtype):
    src = from_bits(F32_EDGES, torch.float32)
    check(device_backend, src, dtype, "edge values")
    check(device_backend, src.to(dtype), torch.float32, "edge values back")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=NAMES.get)
def test_by_hand(device_backend, dtype):
    src = from_bits([b[0] for b in BY_HAND], torch.float32)
    want = from_bits([b[1] if dtype == torch.bfloat16 else b[2] for b in BY_HAND], dtype)
    assert_same_bits(run(device_backend, src, dtype), want, context=f"{device_backend} by hand")


@pytest.mark.parametrize("ddt", DTYPES, ids=NAMES.get)
@pytest.mark.parametrize("sdt", [torch.bfloat16, torch.float16], ids=NAMES.get)
def test_every_16bit_pattern(device_backend, sdt, ddt):
    check(device_backend, from_bits(torch.arange(65536), sdt), ddt, "all patterns")


def midpoints(dtype):
    """fp32 values at, just below and just above every rounding midpoint of `dtype` (both signs)."""
    finite = from_bits(torch.arange(0x7F80 if dtype == torch.bfloat16 else 0x7C00), dtype)
    v = finite.to(torch.float64)
    mid = ((v[:-1] + v[1:]) / 2).to(torch.float32)  # exact: one more bit than dtype has
    top = torch.tensor([65520.0 if dtype == torch.float16 else 3.3961775292304718e38])
    mid = torch.cat([mid, top.to(torch.float32)])
    inf = torch.tensor(float("inf"))
    around = torch.cat([mid, torch.nextafter(mid, inf), torch.nextafter(mid, -inf)])
    return torch.cat([around, -around])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=NAMES.get)
def test_around_every_midpoint(device_backend, dtype):
    src = midpoints(dtype)
    src = torch.cat([src, torch.zeros(-src.numel() % 1024)])
    check(device_backend, src, dtype, "midpoints")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=NAMES.get)
def test_random_f32_bit_patterns(device_backend, dtype):
    g = torch.Generator().manual_seed(13)
    check(device_backend, from_bits(torch.randint(0, 2**32, (1 << 18,), generator=g), torch.float32),
          dtype, "random bits")


def nan_sources():
    f32 = from_bits([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF812345, 0x7FFFFFFF, 0xFFA00000],
                    torch.float32)
    return {torch.float32: f32, torch.bfloat16: from_bits([0x7FC0, 0xFFC0, 0x7F81, 0xFFA3], torch.bfloat16),
            torch.float16: from_bits([0x7E00, 0xFE00, 0x7C01, 0xFD23], torch.float16)}


@pytest.mark.parametrize("ddt", DTYPES, ids=NAMES.get)
@pytest.mark.parametrize("sdt", DTYPES, ids=NAMES.get)
def test_nan_bits_agree_across_backends(device_backend, sdt, ddt):
    """A NaN stays a NaN of the same sign, quiet (bf16 -> fp32 is a plain shift, as in torch),
    with the same bits in every backend."""
    if device_backend[1] == "torch":
        pytest.skip("torch's own NaN payloads are the exception (they vary by path)")
    src = nan_sources()[sdt]
    got = run(device_backend, src, ddt)
    assert torch.isnan(got).all()
    width = 32 if ddt == torch.float32 else 16
    assert ((raw_bits(got) >> (width - 1)) == (raw_bits(src) >> (src.element_size() * 8 - 1))).all()
    if sdt != ddt and (sdt, ddt) != (torch.bfloat16, torch.float32):  # quiet bit set
        assert ((raw_bits(got) >> (22 if width == 32 else (6 if ddt == torch.bfloat16 else 9))) & 1).all()
    assert_same_bits(got, run(("cpu", "cpu"), src, ddt), context="vs the cpu backend")


def test_same_dtype_is_an_exact_copy_including_nan_payloads(device_backend):
    for dtype, src in nan_sources().items():
        assert_same_bits(run(device_backend, src, dtype), src)


def test_cpu_backends_available():
    """The extension and the Triton interpreter path must be there: CI runs the backends above."""
    assert available_backends("cpu")[:1] == ["cpu"]
    assert "triton" in available_backends("cpu") or torch.cuda.is_available()


@pytest.mark.parametrize("offset", slow_except([0, 1, 7], [1]))  # fast loop: one unaligned start
def test_cpu_large_narrowing_output_matches_small_spans(offset):
    """Outputs over 8 MB take the cpu backend's vectorised non-temporal path (fp32 -> bf16): the
    same bits, NaN payloads included, as the scalar path on small spans, and torch's casts."""
    if "cpu" not in available_backends("cpu"):
        pytest.skip("the cpu backend is not built")
    g = torch.Generator().manual_seed(21)
    special = torch.cat([from_bits(F32_EDGES, torch.float32), midpoints(torch.bfloat16), nan_sources()[torch.float32]])
    n = (1 << 22) + 333  # 8 MB of bf16 and an odd tail
    src = from_bits(torch.randint(0, 2**32, (n,), generator=g), torch.float32)
    src[: special.numel()] = special
    src[-special.numel():] = special
    big = torch.zeros(n + 16, dtype=torch.bfloat16)
    out = big[offset : offset + n]  # start not 32-byte aligned for offset > 0: scalar head
    gather_cast(src.view(1, -1), None, out.view(1, -1), backend="cpu")
    small = torch.empty(n, dtype=torch.bfloat16)
    for a in range(0, n, 4096):
        gather_cast(src[a : a + 4096].view(1, -1), None, small[a : a + 4096].view(1, -1), backend="cpu")
    assert_same_bits(out, small, context=f"streamed vs small spans, offset {offset}")
    assert_same_bits(out, src.to(torch.bfloat16), nan_payload=False, context=f"streamed vs torch, offset {offset}")
    assert (big[:offset] == 0).all() and (big[offset + n :] == 0).all()
