"""gather_cast backends vs the torch reference, bit for bit: dtype pairs, shapes, row maps,
strided views, several sources into one output."""
import pytest
import torch
from marks import slow_except

from nanokern.ops import gather_cast
from nanokern.ops.gather_cast_op import gather_cast_torch
from nanokern.ops.testing import assert_same_bits

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
NAMES = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}


def random_values(shape, dtype, seed):
    """Normal values spread over many magnitudes (fp16 overflow and subnormals included)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-30, 20, shape, generator=g).to(torch.float64))
    return x.to(torch.float32).to(dtype)


def whole(t):
    """A 1-D tensor over all of t's storage (sharing it)."""
    return torch.tensor([], dtype=t.dtype, device=t.device).set_(t.untyped_storage())


def on_device(t, device):
    """t's storage copied to `device`, viewed with the same offset and strides (same alignment)."""
    return whole(t).to(device).as_strided(t.shape, t.stride(), t.storage_offset())


def check(device_backend, src, rows, out, context=""):
    """Runs the backend (on `device` copies of the same layout) and compares all of out's storage,
    inside the view and around it, with the torch reference computed on the CPU."""
    device, backend = device_backend
    expected = whole(out).clone()
    gather_cast_torch(src, rows, expected.as_strided(out.shape, out.stride(), out.storage_offset()))
    if device == "cpu":
        gather_cast(src, rows, out, backend=backend)
        actual = whole(out)
    else:
        d_out = on_device(out, device)
        d_rows = None if rows is None else rows.to(device)
        gather_cast(on_device(src, device), d_rows, d_out, backend=backend)
        actual = whole(d_out).cpu()
    assert_same_bits(actual, expected, nan_payload=False, context=f"{backend} {context}")


@pytest.mark.parametrize("ddt", DTYPES, ids=NAMES.get)
@pytest.mark.parametrize("sdt", DTYPES, ids=NAMES.get)
def test_random_all_dtype_pairs(device_backend, sdt, ddt):
    src = random_values((67, 300), sdt, seed=1)
    rows = torch.randint(0, 67, (41,), generator=torch.Generator().manual_seed(2))
    check(device_backend, src, rows, torch.empty(41, 300, dtype=ddt), "row map")
    check(device_backend, src, None, torch.empty(67, 300, dtype=ddt), "identity")


@pytest.mark.parametrize("shape", [(1, 1), (1, 1001), (1001, 1), (3, 100003), (5, 17)])
@pytest.mark.parametrize("sdt,ddt", [(torch.float32, torch.bfloat16), (torch.bfloat16, torch.float16),
                                     (torch.float16, torch.float16)], ids=["f32-bf16", "bf16-f16", "f16-f16"])
def test_odd_shapes(device_backend, shape, sdt, ddt):
    src = random_values(shape, sdt, seed=3)
    rows = torch.arange(shape[0] - 1, -1, -1)
    check(device_backend, src, rows, torch.empty(shape, dtype=ddt))
    check(device_backend, src, None, torch.empty(shape, dtype=ddt))


def rope_permutation(n_heads, head_dim):
    """Interleaved -> half-split RoPE row order per head, as a conversion's row map."""
    per_head = torch.cat([torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)])
    return torch.cat([h * head_dim + per_head for h in range(n_heads)])


@pytest.mark.parametrize("kind", ["permutation", "repeats", "one_row_many_times", "rope", "qkv_k"])
def test_row_maps(device_backend, kind):
    n_heads, n_kv, head_dim, hidden = 4, 2, 16, 96
    n = (n_heads + 2 * n_kv) * head_dim  # a fused qkv weight: [q; k; v]
    src = random_values((n, hidden), torch.float32, seed=4)
    g = torch.Generator().manual_seed(5)
    rows = {
        "permutation": torch.randperm(n, generator=g),
        "repeats": torch.randint(0, n, (3 * n,), generator=g),
        "one_row_many_times": torch.full((50,), n - 1, dtype=torch.int64),
        "rope": rope_permutation(n_heads + 2 * n_kv, head_dim),
        "qkv_k": n_heads * head_dim + rope_permutation(n_kv, head_dim),
    }[kind]
    check(device_backend, src, rows, torch.empty(len(rows), hidden, dtype=torch.bfloat16))


def test_strided_views(device_backend):
    big_src = random_values((40, 500), torch.float32, seed=6)
    src = big_src[:, 123:123 + 257]  # column slice: row stride 500, odd start
    rows = torch.randperm(40, generator=torch.Generator().manual_seed(7))[:29]
    big_out = torch.full((60, 700), -7.0, dtype=torch.bfloat16)
    check(device_backend, src, rows, big_out[5:34, 101:101 + 257], "column+row slice of out")


@pytest.mark.parametrize("offset", [0, 1, 8])
def test_out_at_element_offsets(device_backend, offset):
    """Views starting off a 16-byte boundary (CUDA scalar path) and on one (vector path)."""
    src = random_values((24, 136), torch.float32, seed=9)
    big = torch.zeros(24 * 136 + 16, dtype=torch.bfloat16)
    check(device_backend, src, None, big[offset:offset + 24 * 136].view(24, 136))


def test_out_in_a_byte_buffer_at_odd_offset(device_backend):
    """An output view made with torch.frombuffer at an offset that is not 16-byte aligned, as an
    executor writing into a memory-mapped file does (forces the CUDA kernel's scalar path)."""
    src = random_values((24, 136), torch.bfloat16, seed=8)
    buf = bytearray(2 + 24 * 136 * 2 + 6)
    out = torch.frombuffer(buf, dtype=torch.bfloat16, offset=2, count=24 * 136).view(24, 136)
    check(device_backend, src, torch.arange(24).flip(0), out)
    if device_backend[0] == "cpu":
        assert bytes(buf[:2]) == b"\0\0" and bytes(buf[-6:]) == b"\0" * 6
        assert_same_bits(out, src.flip(0))


def test_sources_into_ranges_of_one_output(device_backend):
    """TP merge: column-parallel shards fill row ranges, row-parallel shards fill column ranges."""
    tp, rows_per, cols = 4, 24, 80
    shards = [random_values((rows_per, cols), torch.float32, seed=10 + r) for r in range(tp)]
    out = torch.zeros(tp * rows_per, cols, dtype=torch.bfloat16)
    for r, shard in enumerate(shards):
        check(device_backend, shard, None, out[r * rows_per:(r + 1) * rows_per], f"row range {r}")
    assert_same_bits(out, torch.cat(shards).to(torch.bfloat16), nan_payload=False)

    wide = torch.zeros(rows_per, tp * cols, dtype=torch.float16)
    for r, shard in enumerate(shards):
        check(device_backend, shard, None, wide[:, r * cols:(r + 1) * cols], f"column range {r}")
    assert_same_bits(wide, torch.cat(shards, dim=1).to(torch.float16), nan_payload=False)


def test_empty(device_backend):
    check(device_backend, torch.ones(0, 8), None, torch.empty(0, 8, dtype=torch.bfloat16))
    check(device_backend, torch.ones(5, 0), torch.tensor([1, 2]), torch.empty(2, 0))
    check(device_backend, torch.ones(5, 8), torch.empty(0, dtype=torch.int64), torch.empty(0, 8))


@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_backend_parallel_chunks(threads):
    """Work split over threads: many rows, and single rows longer than one chunk (65536)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for shape in [(2048, 1024), (2, 200_003)]:
            src = random_values(shape, torch.float32, seed=11)
            rows = torch.randperm(shape[0], generator=torch.Generator().manual_seed(12))
            check(("cpu", "cpu"), src, rows, torch.empty(shape, dtype=torch.bfloat16))
            check(("cpu", "cpu"), src.to(torch.bfloat16), None, torch.empty(shape, dtype=torch.bfloat16))
    finally:
        torch.set_num_threads(old)


LARGE = [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float32), (torch.float16, torch.float32),
         (torch.float32, torch.bfloat16)]


@pytest.mark.parametrize("sdt,ddt", slow_except(LARGE, [c for c in LARGE if c[0] != torch.float16]),  # f16: widening again
                         ids=["bf16-bf16", "bf16-f32", "f16-f32", "f32-bf16"])
def test_cpu_backend_large_outputs(sdt, ddt):
    """Outputs over 8 MB take the non-temporal-store paths (same dtype, widening, fp32 -> bf16):
    unaligned column slices exercise their head and tail handling."""
    src = random_values((1100, 4099), sdt, seed=14)
    rows = torch.randperm(1100, generator=torch.Generator().manual_seed(15))
    big = torch.zeros(1100, 4101, dtype=ddt)
    check(("cpu", "cpu"), src, rows, big[:, 1:4100], "row map")
    check(("cpu", "cpu"), src, None, big[:, 1:4100], "identity")
    check(("cpu", "cpu"), src, None, torch.empty(1100, 4099, dtype=ddt), "packed")
