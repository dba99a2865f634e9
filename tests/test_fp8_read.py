"""FP8 weights read where the executor gathers them (execute/fill.py, ops/fp8_dequant.gather_dequant):
no temporary file, nothing read by --dry-run, every backend and every piece shape (row gathers,
column windows, transposed reads, partial blocks, bands that start inside a piece) giving the
reference's bits: torch's `(q.to(float32) * scale_inv).to(dtype)` (ops/fp8_dequant.dequantize_torch,
checked against a loop by hand and transformers in test_fp8_import.py).
"""
import tempfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import bits, load_dir, tree_bytes
from marks import slow_except
from safetensors.torch import save_file

from nanokern.cli import cli
from nanokern.convert import convert
from nanokern.execute import fill
from nanokern.io import dtypes
from nanokern.io.safetensors import read_header
from nanokern.ops import fp8_dequant as D
from nanokern.ops.fp8_quant import quantize_blocks
from nanokern.plan.pieces import Fp8Ref, OutTensor, Piece

E4M3 = torch.float8_e4m3fn
R, C, BLOCK = 300, 260, (128, 96)  # partial edge blocks both ways


def fp8_source(path):
    """An e4m3 weight holding every byte (NaN too) and its float32 scales, written to a file."""
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (R, C), dtype=torch.uint8, generator=g)
    q[:16, :16] = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    s = torch.exp2(torch.randint(-30, 10, (3, 3), generator=g).float()) * (1 + torch.rand(3, 3, generator=g))
    save_file({"w": q.view(E4M3), "w_scale_inv": s}, str(path))
    h = read_header(path).tensors
    return Fp8Ref(h["w"], h["w_scale_inv"], BLOCK), D.dequantize_torch(q.view(E4M3), s, BLOCK)


def three_pieces(ref):
    """A [300, 250] output: rows gathered across row blocks with a column window, a row range, and
    a transposed read (output rows are source columns); returns the pieces and what they read."""
    perm = torch.randperm(R, generator=torch.Generator().manual_seed(1))[:150].numpy().astype(np.int64)
    pieces = [Piece(ref, perm, 0, 150, 37, 150, 0, 0), Piece(ref, None, 100, 150, 0, 100, 0, 150),
              Piece(ref, None, 10, 150, 20, 250, 150, 0, transpose=True)]
    return pieces, lambda d: torch.cat([torch.cat([d[torch.from_numpy(perm)][:, 37:187], d[100:250, :100]], 1), d.t()[10:160, 20:270]])


def same(got: torch.Tensor, wide: torch.Tensor, torch_nan: bool) -> bool:
    """got is float32 `wide` cast to got's dtype by torch's `.to`, bit for bit; where wide is NaN
    and not torch_nan, a NaN of wide's sign (the kernels' NaN policy, ops/host.py: torch's own NaN
    bits are not its: its CPU float32 -> bfloat16 gives 0xFFFF whatever the sign)."""
    want = wide.to(got.dtype)
    if torch_nan or got.dtype == torch.float32:
        return torch.equal(bits(got), bits(want))
    nan = torch.isnan(wide)
    return (torch.equal(bits(got)[~nan], bits(want)[~nan]) and bool(torch.isnan(got[nan]).all())
            and torch.equal(torch.signbit(got[nan]), torch.signbit(wide[nan])))


@pytest.mark.parametrize("step", slow_except([D.STEP_ELEMS, 1024], [1024]))  # 1024: many steps, tables splitting one
def test_fill_rows_dequantizes_every_piece_shape_as_the_reference(tmp_path, monkeypatch, step):
    monkeypatch.setattr(D, "STEP_ELEMS", step)
    ref, deq = fp8_source(tmp_path / "w.safetensors")
    pieces, reads = three_pieces(ref)
    for dt in (dtypes.FLOAT32, dtypes.BFLOAT16, dtypes.FLOAT16):
        wide = reads(deq)
        for backend in ("cpu", "torch", "no host kernel"):
            with monkeypatch.context() as m:
                if backend == "no host kernel":
                    m.setattr(fill.host, "ERROR", "not built")
                t = OutTensor("w", (300, 250), dt, pieces=pieces)
                out = np.full((300, 250), 7, dt.np)
                sources = fill.Sources()
                for r0, r1 in ((0, 70), (70, 171), (171, 300)):  # bands starting inside each piece
                    fill.fill_rows(t, r0, r1, out[r0:r1], sources, "torch" if backend != "cpu" else "cpu")
                sources.close()
            got = torch.from_numpy(out.view(np.int32 if dt.itemsize == 4 else np.int16)).view(dt.torch)
            assert same(got, wide, backend != "cpu"), (dt, backend)


@pytest.fixture(scope="module")
def fp8_export(tmp_path_factory):
    """nanokern's FP8 export of a synthetic Llama (dims that divide by 128; 4 heads, 2 KV heads:
    TP2 splits it) and its weights dequantized by hand (test_fp8_import.py)."""
    from test_fp8_import import expected_from_export

    from nanokern.bench.synthetic import Shape, write_checkpoint

    tmp = tmp_path_factory.mktemp("fp8read")
    ck = write_checkpoint(tmp / "ck", Shape(2, 256, 512, 4, 2, 512, "llama"), tp=1, pp=1, dtype="fp32", seed=5)
    convert(ck, tmp / "fp8", dtype="fp8", progress=False)
    return tmp / "fp8", expected_from_export(tmp / "fp8")


def test_dry_run_reads_no_weight(fp8_export, tmp_path, monkeypatch):
    def no(*a, **k):
        raise AssertionError("a dry run read an FP8 weight")

    for name in ("gather_dequant", "dequantize_host", "scales_host"):
        monkeypatch.setattr(D, name, no)
    monkeypatch.setattr(fill.Sources, "fp8", no)
    r = CliRunner().invoke(cli, ["convert", str(fp8_export[0]), str(tmp_path / "nt"), "--dry-run", "--tp", "1"])
    assert r.exit_code == 0, r.output
    assert "qkv_proj" in r.output and "<- 1 piece(s) from model.safetensors" in r.output
    assert not (tmp_path / "nt").exists()


def test_fp8_to_hf_bf16_needs_no_temporary_space(fp8_export, tmp_path, monkeypatch):
    """FP8 -> HF bf16 (the CLI reshapes HF into HF) with no temporary folder to be had: each
    weight is the dequantized one rounded to bf16, what transformers' dequantization holds."""
    def no(*a, **k):
        raise AssertionError("a temporary file was made")

    for name in ("mkdtemp", "mkstemp", "gettempdir", "NamedTemporaryFile", "TemporaryDirectory"):
        monkeypatch.setattr(tempfile, name, no)
    folder, expect = fp8_export
    convert(folder, tmp_path / "bf16", to="hf", dtype="bf16", progress=False)
    back = load_dir(tmp_path / "bf16")
    assert set(back) == set(expect)
    for name, t in expect.items():
        assert back[name].dtype == torch.bfloat16 and torch.equal(bits(back[name]), bits(t.to(torch.bfloat16))), name


@pytest.mark.parametrize("backend", slow_except(["cpu", "torch"], ["cpu"]))
def test_requantizing_an_fp8_folder_quantizes_its_dequantized_weights(fp8_export, tmp_path, backend):
    """FP8 -> FP8 (--to hf --dtype fp8): each weight is dequantized in float32 (the reference's
    values), then quantized by the reference quantizer's steps; the rest as --dtype fp8 makes it."""
    folder, expect = fp8_export
    convert(folder, tmp_path / "q", to="hf", dtype="fp8", backend=backend, progress=False)
    back = load_dir(tmp_path / "q")
    quantized = [n for n in expect if back[n].dtype == E4M3]
    assert quantized and set(back) == set(expect) | {n.removesuffix(".weight") + ".weight_scale_inv" for n in quantized}
    for name, t in expect.items():
        if name in quantized:
            q, s = quantize_blocks(t.to(torch.float32))
            assert torch.equal(bits(back[name]), bits(q)), name
            assert torch.equal(back[name.removesuffix(".weight") + ".weight_scale_inv"], s), name
        else:
            assert torch.equal(bits(back[name]), bits(t.to(torch.bfloat16))), name


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_interleaved_tp2_import_gathers_dequantized_rows(fp8_export, tmp_path, backend):
    """RoPE-interleaved Nanotron at TP2 (q/k rows gathered, a row-parallel column window) and
    back to HF fp32: the weights dequantized by hand, bit for bit."""
    folder, expect = fp8_export
    convert(folder, tmp_path / "nt", dtype="fp32", tp=2, rope_interleaved="true", backend=backend, progress=False)
    convert(tmp_path / "nt", tmp_path / "back", to="hf", dtype="fp32", progress=False)
    back = load_dir(tmp_path / "back")
    assert set(back) == set(expect)
    for name, t in expect.items():
        assert torch.equal(bits(back[name]), bits(t)), name


@pytest.mark.slow
def test_torchrun_import_of_an_fp8_folder_is_byte_identical(fp8_export, tmp_path):
    """Two processes (each rank dequantizes only the pieces it writes) give one process's bytes."""
    from test_torchrun import convert as run_convert

    for procs in (1, 2):
        r = run_convert([fp8_export[0], tmp_path / f"p{procs}", "--to", "nanotron", "--tp", "2", "--pp", "2"], procs)
        assert r.returncode == 0, r.stderr
    assert tree_bytes(tmp_path / "p1") == tree_bytes(tmp_path / "p2")
