"""FP8 folders read: dequantization (ops/fp8_dequant.py), imports, verify, inspect and parity.

Expectations come from elsewhere than the code under test: e4m3 values from torch's own
float8_e4m3fn cast, dequantization by hand (a loop over the scale grid's blocks) and transformers'
`Fp8Dequantize` / `Fp8Quantize`, release folders quantized here by a loop per block, and the
rounding bound checked against transformers' quantizer.
"""
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from helpers import bits, load_dir, run_cli
from safetensors.torch import save_file

from nanokern.convert import convert
from nanokern.ops import fp8_dequant as D

pytest.importorskip("accelerate")
E4M3 = torch.float8_e4m3fn


def by_hand(q: torch.Tensor, s: torch.Tensor, block) -> torch.Tensor:
    """Each block of the grid times its scale, in float32, the edge blocks cut to the weight."""
    out = torch.empty(q.shape, dtype=torch.float32)
    br, bc = block
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            blk = q[i * br : (i + 1) * br, j * bc : (j + 1) * bc].to(torch.float32)
            out[i * br : (i + 1) * br, j * bc : (j + 1) * bc] = blk * s[i, j].to(torch.float32)
    return out


def quantize_by_hand(w: torch.Tensor, block) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-style block quantization, one block at a time (ceil grid, partial edge blocks)."""
    br, bc = block
    r, c = w.shape
    q = torch.empty(w.shape, dtype=E4M3)
    s = torch.empty((-(-r // br), -(-c // bc)), dtype=torch.float32)
    for i in range(s.shape[0]):
        for j in range(s.shape[1]):
            x = w[i * br : (i + 1) * br, j * bc : (j + 1) * bc].to(torch.float32)
            amax = x.abs().max()
            scale = 448.0 / amax if amax > 0 else torch.tensor(1.0)
            q[i * br : (i + 1) * br, j * bc : (j + 1) * bc] = (x * scale).clamp(-448, 448).to(E4M3)
            s[i, j] = 1.0 / scale
    return q, s


def test_dequantize_host_torch_hand_and_transformers_agree():
    """Every e4m3 byte (NaN too), float32/bf16/e8m0 scales, partial edge blocks: the numpy path
    and the torch reference give the same bits, equal to the loop by hand and to transformers."""
    from transformers.integrations.finegrained_fp8 import Fp8Dequantize

    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 256, (300, 260), dtype=torch.uint8, generator=g)
    q[:16, :16] = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    s = torch.exp2(torch.randint(-30, 10, (3, 3), generator=g).float()) * (1 + torch.rand(3, 3, generator=g))
    s[0, 0] = 2.0 ** -126 * 1.5  # a subnormal product
    want = by_hand(q.view(E4M3), s, (128, 128))
    got_t = D.dequantize_torch(q.view(E4M3), s, (128, 128))
    got_h = torch.from_numpy(D.dequantize_host(q.numpy(), s.numpy(), (128, 128)))
    assert torch.equal(bits(got_t), bits(want)) and torch.equal(bits(got_h), bits(want))
    for sd in (torch.bfloat16, torch.uint8):  # bf16 scales; one byte: 2^(b - 127)
        raw = s.to(sd) if sd == torch.bfloat16 else torch.randint(100, 140, (3, 3), dtype=torch.uint8, generator=g)
        wide = raw.float() if sd == torch.bfloat16 else torch.exp2(raw.float() - 127)
        host_s = D.scales_host(raw.view(torch.int16).numpy().view("<u2") if sd == torch.bfloat16 else raw.numpy())
        assert torch.equal(bits(D.dequantize_torch(q.view(E4M3), raw, (128, 128))), bits(by_hand(q.view(E4M3), wide, (128, 128))))
        assert torch.equal(bits(torch.from_numpy(D.dequantize_host(q.numpy(), host_s, (128, 128)))),
                           bits(by_hand(q.view(E4M3), wide, (128, 128))))
    theirs = Fp8Dequantize(SimpleNamespace())  # (divisible shapes: transformers infers the block from the grid)
    for dt in (torch.float32, torch.bfloat16):
        a = theirs._dequantize_one(q[:256, :256].view(E4M3), s[:2, :2], output_dtype=dt)
        assert torch.equal(bits(a), bits(D.dequantize_torch(q[:256, :256].view(E4M3), s[:2, :2], (128, 128), dt)))


def test_rounding_bound_holds_where_transformers_quantizes_and_is_tight():
    from transformers.integrations.finegrained_fp8 import Fp8Quantize

    quant = Fp8Quantize(SimpleNamespace(quantization_config=SimpleNamespace(weight_block_size=[128, 128], scale_fmt=None)))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 512, generator=g) * torch.exp2(torch.randint(-20, 20, (4, 1, 4, 1), generator=g).float()).expand(
        4, 128, 4, 128).reshape(512, 512)
    x[:128, :128] *= torch.exp2(-12 * torch.rand(128, 128, generator=g))  # a block spanning e4m3's subnormals
    out = quant._quantize_one("w.weight", x)
    q, s = out["w.weight"], out["w.weight_scale_inv"]
    d = D.dequantize_torch(q, s, (128, 128))
    limit = D.rounding_bound(x.abs(), D.block_scales(s, (128, 128), (512, 512)))
    ratio = (d - x).abs() / limit
    assert float(ratio.max()) <= 1.0
    assert float(ratio.max()) > 0.9  # not vacuous: some element rounds by nearly half an e4m3 step


def make_release(src: Path, out: Path, block, skip: tuple[str, ...]) -> dict:
    """A DeepSeek/Qwen-style FP8 release of HF folder src: every 2-D Linear weight quantized by
    hand (partial edge blocks), except the modules in skip (listed in modules_to_not_convert)."""
    out.mkdir()
    plain = load_dir(src)
    tensors, expect = {}, {}
    for name, t in plain.items():
        mod = name.removesuffix(".weight")
        if name.endswith("proj.weight") and t.dim() == 2 and mod not in skip:
            q, s = quantize_by_hand(t, block)
            tensors[name], tensors[mod + ".weight_scale_inv"] = q, s
            expect[name] = by_hand(q, s, block)
        else:
            tensors[name] = t.to(torch.bfloat16)
            expect[name] = tensors[name].float()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["dtype"] = "bfloat16"
    cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                  "weight_block_size": list(block), "modules_to_not_convert": ["lm_head", *skip]}
    (out / "config.json").write_text(json.dumps(cfg))
    return expect


def _release_model(tmp: Path) -> Path:
    from hf_families import build_model

    # hidden 192 and intermediate 200: nothing divides by 128, every weight has partial edge blocks
    return build_model("LlamaForCausalLM", "LlamaConfig", dict(hidden_size=192, intermediate_size=200, num_attention_heads=3,
                       num_key_value_heads=1, num_hidden_layers=2, tie_word_embeddings=False), tmp / "plain")


def _import_equals(release: Path, tmp: Path, expect: dict, tp: int = 1) -> None:
    """FP8 -> Nanotron (fp32) -> HF (fp32): every weight is the dequantized one, bit for bit."""
    convert(release, tmp / "nt", dtype="fp32", tp=tp, progress=False)
    convert(tmp / "nt", tmp / "back", to="hf", dtype="fp32", progress=False)
    back = load_dir(tmp / "back")
    assert set(back) == set(expect)
    for name, t in expect.items():
        assert torch.equal(bits(back[name]), bits(t)), name


@pytest.mark.parametrize("block", [(128, 128), pytest.param((64, 96), marks=pytest.mark.slow)])
def test_release_folder_with_partial_blocks_imports_as_dequantized(tmp_path, block):
    plain = _release_model(tmp_path)
    expect = make_release(plain, tmp_path / "release", block, skip=("model.layers.1.mlp.down_proj",))
    _import_equals(tmp_path / "release", tmp_path, expect)


@pytest.mark.slow
def test_release_folder_inspect_and_verify(tmp_path):
    plain = _release_model(tmp_path)
    rel = tmp_path / "release"
    make_release(plain, rel, (128, 128), skip=())
    r = run_cli("inspect", rel)
    assert r.returncode == 0 and "with partial edge blocks" in r.stdout and "128x128 blocks" in r.stdout, r.stdout
    r = run_cli("verify", rel, "--against", plain)
    assert r.returncode == 0 and "within e4m3's rounding bound" in r.stdout, r.stdout + r.stderr
    assert "no nanokern-manifest.json (not written by nanokern)" in r.stdout
    bad = tmp_path / "bad"
    shutil.copytree(rel, bad)
    t = load_dir(bad)
    q = t["model.layers.0.self_attn.q_proj.weight"].view(torch.uint8).clone()
    q[5, 7] = 0x7E if int(q[5, 7]) & 0x7F < 0x70 else 0x00  # 448 (or 0 where it was >= 256): far outside
    t["model.layers.0.self_attn.q_proj.weight"] = q.view(E4M3)
    save_file(t, str(bad / "model.safetensors"), metadata={"format": "pt"})
    r = run_cli("verify", bad, "--against", plain)
    assert r.returncode == 1 and "q_proj.weight: 1 element(s) outside e4m3's rounding bound" in r.stderr, r.stdout + r.stderr


def test_scales_that_do_not_fit_the_block_are_one_line(tmp_path):
    plain = _release_model(tmp_path)
    rel = tmp_path / "release"
    make_release(plain, rel, (128, 128), skip=())
    cfg = json.loads((rel / "config.json").read_text())
    cfg["quantization_config"]["weight_block_size"] = [64, 64]  # the grid was made for 128
    (rel / "config.json").write_text(json.dumps(cfg))
    r = run_cli("convert", rel, tmp_path / "nt")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and str(rel / "model.safetensors") in lines[0], r.stderr
    assert "weight_scale_inv has shape" in lines[0] and "in 64x64 blocks needs" in lines[0]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    from nanokern.bench.synthetic import Shape, write_checkpoint

    tmp = tmp_path_factory.mktemp("fp8imp")
    ck = write_checkpoint(tmp / "ck", Shape(2, 256, 512, 4, 2, 512, "llama"), tp=2, pp=1, dtype="fp32", seed=3)
    convert(ck, tmp / "fp8", dtype="fp8", backend="torch", progress=False)
    convert(ck, tmp / "keep", dtype="keep", progress=False)
    return tmp


def expected_from_export(folder: Path) -> dict:
    t = load_dir(folder)
    out = {}
    for name, v in t.items():
        if not name.endswith("_scale_inv"):
            s = t.get(name.removesuffix(".weight") + ".weight_scale_inv")
            out[name] = by_hand(v, s, (128, 128)) if s is not None else v.float()
    return out


def test_fp8_export_round_trip_equals_the_dequantized_weights(synthetic, tmp_path):
    """FP8 -> Nanotron -> HF fp32 is the dequantized weights; the default (keep) import is their
    bf16 rounding, what transformers holds after loading the FP8 folder in its bf16."""
    expect = expected_from_export(synthetic / "fp8")
    _import_equals(synthetic / "fp8", tmp_path, expect, tp=2)
    convert(synthetic / "fp8", tmp_path / "nt_keep", progress=False)
    convert(tmp_path / "nt_keep", tmp_path / "back_keep", to="hf", dtype="keep", progress=False)
    back = load_dir(tmp_path / "back_keep")
    for name, t in expect.items():
        assert back[name].dtype == torch.bfloat16 and torch.equal(bits(back[name]), bits(t.to(torch.bfloat16))), name


def test_verify_against_the_keep_twin_is_exact(synthetic):
    from nanokern.verify import verify

    rep = verify(synthetic / "fp8", synthetic / "keep")
    assert rep.ok and any("14 FP8 weight(s): re-quantizing" in n and "(exact check)" in n for n in rep.notes), rep.notes
    assert rep.tensors == 21


@pytest.mark.slow

def test_parity_against_an_fp8_folder_states_the_e4m3_bound(synthetic, tmp_path):
    r = run_cli("parity", synthetic / "ck", "--hf", synthetic / "fp8", "--device", "cpu", "--seq-len", "8")
    assert r.returncode == 0 and "PASS" in r.stdout, r.stdout + r.stderr
    assert "|d - x| <= (2^-4 + 2^-21)|x|" in r.stdout and "e4m3 noise floor" in r.stdout
    bad = tmp_path / "bad"  # two q heads swapped (rows and scales move together): a layout error
    shutil.copytree(synthetic / "fp8", bad)
    t = load_dir(bad)
    q, s = t["model.layers.0.self_attn.q_proj.weight"], t["model.layers.0.self_attn.q_proj.weight_scale_inv"]
    t["model.layers.0.self_attn.q_proj.weight"] = torch.cat([q[128:], q[:128]])
    t["model.layers.0.self_attn.q_proj.weight_scale_inv"] = torch.cat([s[1:], s[:1]])
    save_file(t, str(bad / "model.safetensors"), metadata={"format": "pt"})
    r = run_cli("parity", synthetic / "ck", "--hf", bad, "--device", "cpu", "--seq-len", "8")
    assert r.returncode == 1 and "FAIL" in r.stdout, r.stdout + r.stderr


# every family, with dims that divide by 128 so that its Linears are quantized
DIVISIBLE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
                 num_hidden_layers=2, vocab_size=96)
MOE = dict(moe_intermediate_size=128, shared_expert_intermediate_size=128, mlp_only_layers=[1])


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "qwen2_bias", "smollm3_nope", "qwen2_moe", "fixture:tp2_pp2",
                                    "fixture:qwen2_bias_tp1_pp2", "fixture:qwen2_moe_tp1_pp2", "fixture:smollm3_nope_tp1_pp1_tied"])
def test_every_family_fp8_export_loads_and_imports_as_dequantized(family, tmp_path):
    """transformers (CPU: it dequantizes) loads the FP8 export with every parameter equal to the
    weights dequantized by hand, and nanokern's import (-> Nanotron -> HF fp32) gives them too."""
    from hf_families import FAMILIES, build_model
    from test_fp8_export import check_transformers_load

    if family.startswith("fixture:"):
        from fixtures_path import fixture

        src = fixture("nanotron", family.split(":")[1])
    else:
        cls, cfg_cls, settings = FAMILIES[family]
        src = build_model(cls, cfg_cls, {**settings, **DIVISIBLE, **(MOE if "moe" in family else {})}, tmp_path / "plain")
    convert(src, tmp_path / "fp8", to="hf", dtype="fp8", backend="torch", progress=False)
    expect = expected_from_export(tmp_path / "fp8")
    if not family.startswith("fixture:"):
        assert any(n.endswith("_scale_inv") for n in load_dir(tmp_path / "fp8")), "nothing quantized"
    cfg = json.loads((tmp_path / "fp8" / "config.json").read_text())
    check_transformers_load(tmp_path / "fp8", load_dir(tmp_path / "fp8"), tmp_path / "by_hand", cfg)
    _import_equals(tmp_path / "fp8", tmp_path, expect)
