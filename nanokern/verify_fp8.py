"""`nanokern verify` of HF FP8 folders (formats/hf_fp8.py): their values read (every FP8 weight
dequantized in memory, one tensor at a time), and an FP8 folder compared with an unquantized twin
(its `--dtype keep` export, or the checkpoint it came from), block by block:

- exact: re-quantizing the twin's tensor with nanokern's own torch reference quantizer
  (ops/fp8_quant.quantize_blocks, transformers' Fp8Quantize steps) gives the stored e4m3 bytes
  and scales bit for bit. It applies to 128 x 128 blocks of tensors that divide by 128, when the
  twin holds the values the export quantized (its source dtype).
- bound: otherwise every dequantized element is within e4m3's rounding bound of the twin's value
  (ops/fp8_dequant.rounding_bound, derived there), plus the twin's own rounding where it is a
  lower precision than float32 (a bf16 twin of a float32 source).
"""

from __future__ import annotations

from pathlib import Path

import torch

from nanokern.formats import hf, hf_fp8
from nanokern.io.safetensors import map_tensor, read_header
from nanokern.ops import fp8_dequant

# unit roundoff and smallest subnormal step of a twin's dtype (its own rounding of the source)
TWIN_ROUNDING = {torch.float32: (0.0, 0.0), torch.bfloat16: (2.0 ** -8, 2.0 ** -134), torch.float16: (2.0 ** -11, 2.0 ** -25)}


def is_fp8_folder(path) -> bool:
    p = Path(path)
    return hf.is_hf(p) and not (p / "latest.txt").exists() and hf.is_quantized(hf.read_config(p))


def read_fp8(path):
    """(the model with its FP8 weights as stored, name -> hf_fp8.Fp8Weight)."""
    model = hf.read_hf(path, dequantize=False)
    refs = {n: r for f in sorted({b.ref.path for t in model.tensors.values() for b in t.blocks})
            for n, r in read_header(f).tensors.items()}
    cfg_file = Path(path) / "config.json"
    return model, hf_fp8.fp8_pairs(refs, hf_fp8.fp8_config(hf.read_config(path), cfg_file))


def stored(w: hf_fp8.Fp8Weight, maps: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(e4m3 weight, float32 scale grid) as stored."""
    s = torch.from_numpy(w.scales_f32(maps).copy())
    return map_tensor(w.weight, maps), s


def dequantized(w: hf_fp8.Fp8Weight, maps: dict) -> torch.Tensor:
    q, s = stored(w, maps)
    return fp8_dequant.dequantize_torch(q, s, w.block)


def scale_problems(name: str, w: hf_fp8.Fp8Weight, maps: dict) -> list[str]:
    s = stored(w, maps)[1]
    bad = int((~torch.isfinite(s) | (s <= 0)).sum())
    return [f"{name}: {bad} scale(s) not finite and positive in {hf_fp8.scale_name(name)}"] if bad else []


def exact_applies(w: hf_fp8.Fp8Weight) -> bool:
    from nanokern.ops.fp8_quant import BLOCK

    r, c = w.weight.shape
    return w.block == (BLOCK, BLOCK) and r % BLOCK == 0 and c % BLOCK == 0


def compare(name: str, w: hf_fp8.Fp8Weight, twin: torch.Tensor, maps: dict) -> tuple[str, str | None]:
    """('exact' or 'bound', a problem line or None) for FP8 weight `name` against its twin."""
    q, s = stored(w, maps)
    if exact_applies(w):
        from nanokern.ops.fp8_quant import quantize_blocks

        q2, s2 = quantize_blocks(twin)
        if torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2.view(torch.int32), s.view(torch.int32)):
            return "exact", None
    d = fp8_dequant.dequantize_torch(q, s, w.block)
    x = twin.to(torch.float32)
    rel, tiny = TWIN_ROUNDING[twin.dtype]
    # the twin x_t is the source x_s rounded: |x_t - x_s| <= rel |x_s| + tiny, so |x_s| <= X below and
    # |d - x_t| <= |d - x_s| + |x_s - x_t| <= rounding_bound(X) + rel X + tiny
    big_x = (x.abs() + tiny) / (1 - rel)
    limit = fp8_dequant.rounding_bound(big_x, fp8_dequant.block_scales(s, w.block, tuple(q.shape))) + rel * big_x + tiny
    err = (d - x).abs()
    over = ~(err <= limit) & ~x.isnan()
    if not bool(over.any()):
        return "bound", None
    n = int(over.sum())
    i = int(torch.nonzero(over.flatten())[0])
    return "bound", (f"{name}: {n} element(s) outside e4m3's rounding bound of the twin's value (first at flat index {i}: "
                     f"{d.flatten()[i].item():.6g} vs {x.flatten()[i].item():.6g}, limit {limit.flatten()[i].item():.3g})")


def notes(kinds: dict[str, list[str]], against) -> list[str]:
    out = []
    if kinds.get("exact"):
        out.append(f"{len(kinds['exact'])} FP8 weight(s): re-quantizing {against}'s values with nanokern's quantizer "
                   f"gives the stored e4m3 bytes and scales bit for bit (exact check)")
    if kinds.get("bound"):
        out.append(f"{len(kinds['bound'])} FP8 weight(s) (e.g. {kinds['bound'][0]}): every element within e4m3's rounding "
                   f"bound of {against}'s value, |d - x| <= (2^-4 + 2^-21)|x| + (2^-10 + 2^-30) scale_inv (+ the twin's "
                   f"own rounding below float32); the exact check did not apply or did not match (blocks other than "
                   f"128x128, partial blocks, or a twin not in the export's source precision)")
    return out
