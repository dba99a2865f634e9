"""`convert --dtype fp8`: FP8 (128 x 128-block e4m3) HF exports of every fixture family, and of
synthetic checkpoints whose dims divide by 128 (two TP shards, RoPE-permuted q/k rows, experts).

Expectations come from elsewhere than the code under test: each quantized tensor is what
transformers' own quantizer (`Fp8Quantize._quantize_one`) gives for the same tensor exported in
its source dtype (`--dtype keep`); every other tensor is the `--dtype bf16` export's; and
transformers (CPU: it dequantizes) loads the FP8 folder with every parameter equal to the model it
loads from the same weights dequantized by hand. `--fp8-scale ue8m0` the same way, against that
quantizer's `scale_fmt="ue8m0"` (its e8m0 scales, written here as float32 powers of two), and
`nanokern watch --dtype fp8` writes what convert writes.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fixtures_path import NANOTRON_FIXTURES, QWEN2_FIXTURES, fixture
from safetensors import safe_open
from safetensors.torch import save_file

from marks import slow_except

from nanokern.bench.synthetic import Shape, write_checkpoint
from nanokern.convert import convert

pytest.importorskip("accelerate")


def tensors(folder: Path) -> dict:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        with safe_open(f, "pt") as s:
            for k in s.keys():
                out[k] = s.get_tensor(k)
    return out


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()])


def transformers_quantizer(scale_fmt=None):
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    cfg = SimpleNamespace(weight_block_size=[128, 128], scale_fmt=scale_fmt)
    return Fp8Quantize(SimpleNamespace(quantization_config=cfg))


def dequantize(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """By hand: every 128 x 128 block times its scale_inv, in float32."""
    return q.to(torch.float32) * s.repeat_interleave(128, 0).repeat_interleave(128, 1)


PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_weight(name: str) -> bool:
    """The weight of a Linear of attention, MLP or experts (not the router `mlp.gate`, not the
    shared expert's one-output gate, not embeddings, lm_head or norms)."""
    parts = name.split(".")
    return parts[-1] == "weight" and len(parts) > 1 and parts[-2] in PROJECTIONS


def near_power(s: torch.Tensor) -> torch.Tensor:
    """Float scale_inv within 2^-15 of a power of two (not on one): where transformers' float32
    ceil(log2) may keep the power below (tests/test_ops_fp8_ue8m0.py covers those exactly)."""
    m, _ = torch.frexp(s.double())
    rel = torch.minimum((2 * m - 1).abs(), (1 - m).abs() * 2)
    return (rel > 0) & (rel < 2.0 ** -15)


def check_export(src: Path, tmp: Path, expect_quantized: bool, backend: str = "auto", scale_fmt: str = "float") -> dict:
    fp8_dir, keep_dir, bf16_dir = tmp / "fp8", tmp / "keep", tmp / "bf16"
    convert(src, fp8_dir, dtype="fp8", backend=backend, progress=False, max_shard_size="200kB", fp8_scale=scale_fmt)
    convert(src, keep_dir, dtype="keep", progress=False)
    convert(src, bf16_dir, dtype="bf16", progress=False)
    got, keep, plain = tensors(fp8_dir), tensors(keep_dir), tensors(bf16_dir)
    quantizer = transformers_quantizer(None if scale_fmt == "float" else scale_fmt)
    quantized, unquantized = [], []
    for name, t in keep.items():
        theirs = quantizer._quantize_one(name, t)
        if linear_weight(name) and len(theirs) == 2:  # a Linear of attention/MLP/experts that divides
            sname = name.removesuffix(".weight") + ".weight_scale_inv"
            assert got[name].dtype == torch.float8_e4m3fn and got[sname].dtype == torch.float32, name
            if scale_fmt == "ue8m0":  # theirs float8_e8m0fnu: the same powers of two, exactly
                assert theirs[sname].dtype == torch.float8_e8m0fnu
                assert not near_power(transformers_quantizer()._quantize_one(name, t)[sname]).any(), name
                theirs[sname] = theirs[sname].to(torch.float32)
            assert torch.equal(bits(got[name]), bits(theirs[name])), name
            assert torch.equal(bits(got[sname]), bits(theirs[sname])), sname
            quantized.append(name)
            continue
        assert got[name].dtype == plain[name].dtype and torch.equal(bits(got[name]), bits(plain[name])), name
        if name.endswith(".weight"):
            unquantized.append(name)
    assert set(got) == set(plain) | {n.removesuffix(".weight") + ".weight_scale_inv" for n in quantized}
    if expect_quantized is not None:
        assert bool(quantized) == expect_quantized, quantized
    cfg = json.loads((fp8_dir / "config.json").read_text())
    q = cfg["quantization_config"]
    assert {k: q[k] for k in ("quant_method", "fmt", "activation_scheme", "weight_block_size")} == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    assert q.get("scale_fmt", "float") == scale_fmt and set(q) <= {"quant_method", "fmt", "activation_scheme",
                                                                   "weight_block_size", "modules_to_not_convert", "scale_fmt"}
    listed = set(q["modules_to_not_convert"])
    for name in unquantized:
        module = name.removesuffix(".weight")
        assert module in listed or module.split(".experts.")[0] + ".experts" in listed, module
    for name in quantized:
        assert name.removesuffix(".weight") not in listed
    for f in fp8_dir.glob("*.safetensors"):  # each weight's scales in its file
        with safe_open(f, "pt") as s:
            keys = set(s.keys())
        assert all(n.removesuffix(".weight") + ".weight_scale_inv" in keys for n in quantized if n in keys)
    check_transformers_load(fp8_dir, got, tmp / "by_hand", cfg)
    return {"quantized": quantized, "unquantized": unquantized}


def check_transformers_load(fp8_dir: Path, got: dict, by_hand: Path, cfg: dict) -> None:
    """transformers loads the FP8 folder (dequantizing on the CPU) as the same model as the
    hand-dequantized weights in an unquantized folder."""
    from transformers import AutoModelForCausalLM

    by_hand.mkdir()
    plain = {}
    for name, t in got.items():
        if name.endswith("_scale_inv"):
            continue
        sname = name.removesuffix(".weight") + ".weight_scale_inv"
        plain[name] = dequantize(t, got[sname]) if sname in got else t.to(torch.float32)
    save_file(plain, str(by_hand / "model.safetensors"), metadata={"format": "pt"})
    ref_cfg = {k: v for k, v in cfg.items() if k != "quantization_config"}
    (by_hand / "config.json").write_text(json.dumps(ref_cfg))
    model = AutoModelForCausalLM.from_pretrained(fp8_dir, dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(by_hand, dtype=torch.float32)
    mine, theirs = dict(model.named_parameters()), dict(ref.named_parameters())
    assert mine.keys() == theirs.keys()
    for name, p in mine.items():
        # (transformers keeps an unquantized fused-experts tensor of an FP8 folder in the file's
        # bf16 whatever `dtype` asks: the values are compared in the dtype it chose)
        assert torch.equal(p, theirs[name].to(p.dtype)), name


ALL_FIXTURES = [*NANOTRON_FIXTURES, *QWEN2_FIXTURES]


@pytest.mark.parametrize("name", slow_except(ALL_FIXTURES, ["tp2_pp2", "qwen2_moe_tp1_pp2"]))
def test_fixture_family_exports(name, tmp_path):
    """The tiny fixtures: what divides by 128 is quantized (often nothing), the rest listed."""
    check_export(fixture("nanotron", name), tmp_path, expect_quantized=None)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "smollm3", "moe"])
def test_synthetic_quantized_exports(arch, tmp_path):
    """Dims that divide by 128 at TP 2: q rows from one shard per block (the kernel straight from
    the source), k rows from both shards within a block and the experts' transposed reads (through
    the 128-row scratch), with the interleaved-RoPE row permutation."""
    src = write_checkpoint(tmp_path / "ckpt", Shape(2, 256, 512, 4, 2, 512, arch), tp=2, pp=1, dtype="fp32", seed=3)
    mc = src / "0" / "model_config.json"
    cfg = json.loads(mc.read_text())
    cfg["rope_interleaved"] = True
    mc.write_text(json.dumps(cfg))
    got = check_export(src, tmp_path, expect_quantized=True)
    names = " ".join(got["quantized"])
    assert "self_attn.q_proj" in names and "self_attn.k_proj" in names and "mlp.down_proj" in names or arch == "moe"
    if arch == "moe":
        assert "mlp.experts.0.gate_proj" in names and "mlp.shared_expert.up_proj" in names
    assert not any(k in names for k in ("embed_tokens", "lm_head", "norm", "mlp.gate.weight"))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_synthetic_backends_give_the_same_bytes(backend, tmp_path):
    """The torch-op backends run the same plan into the same files as the host kernel."""
    src = write_checkpoint(tmp_path / "ckpt", Shape(1, 256, 512, 4, 2, 256, "moe"), tp=2, pp=1, dtype="bf16", seed=5)
    convert(src, tmp_path / "cpu", dtype="fp8", backend="cpu", progress=False)
    convert(src, tmp_path / backend, dtype="fp8", backend=backend, progress=False)
    for f in sorted((tmp_path / "cpu").glob("*.safetensors")):
        assert f.read_bytes() == (tmp_path / backend / f.name).read_bytes(), f.name


@pytest.mark.parametrize("arch", slow_except(["llama", "moe"], ["moe"]))
def test_synthetic_ue8m0_exports(arch, tmp_path):
    """--fp8-scale ue8m0: transformers' scale_fmt="ue8m0" quantizer's bits (its e8m0 scales as
    float32), config.json's scale_fmt, and transformers loads the folder as those weights."""
    src = write_checkpoint(tmp_path / "ckpt", Shape(1, 256, 512, 4, 2, 256, arch), tp=2, pp=1, dtype="bf16", seed=7)
    got = check_export(src, tmp_path, expect_quantized=True, scale_fmt="ue8m0")
    for name in got["quantized"]:  # every scale a power of two
        s = tensors(tmp_path / "fp8")[name.removesuffix(".weight") + ".weight_scale_inv"]
        assert (torch.frexp(s)[0] == 0.5).all(), name


def test_watch_exports_fp8_as_convert(tmp_path):
    """`nanokern watch --dtype fp8 --fp8-scale ue8m0 --once` writes convert's bytes for each step;
    --fp8-scale without --dtype fp8 is refused at once."""
    from helpers import run_cli
    from test_watch_trainer import same_export

    ck = tmp_path / "ck"
    src = write_checkpoint(ck, Shape(1, 256, 256, 2, 2, 256, "llama"), tp=1, pp=1, dtype="fp32", seed=9)
    step = next(p for p in src.iterdir() if p.is_dir())
    convert(step, tmp_path / "ref", dtype="fp8", fp8_scale="ue8m0", progress=False)
    r = run_cli("watch", src, tmp_path / "out", "--once", "--dtype", "fp8", "--fp8-scale", "ue8m0", "-q")
    assert r.returncode == 0, r.stderr
    same_export(tmp_path / "out" / step.name, tmp_path / "ref")
    assert json.loads((tmp_path / "ref" / "config.json").read_text())["quantization_config"]["scale_fmt"] == "ue8m0"
    r = run_cli("watch", src, tmp_path / "out2", "--once", "--fp8-scale", "ue8m0", "-q")
    assert r.returncode != 0 and "--dtype fp8" in r.stderr and not (tmp_path / "out2").exists()
