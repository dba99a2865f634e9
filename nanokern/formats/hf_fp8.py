"""HF FP8 folders read: block-quantized float8_e4m3fn weights, each with its `weight_scale_inv`
grid (nanokern's `--dtype fp8` exports, DeepSeek-V3 / Qwen3 FP8 releases: config.json's
`quantization_config` {quant_method fp8, fmt e4m3, activation_scheme dynamic, weight_block_size}).

- `fp8_config`: the quantization_config, checked; what is not supported is one line naming
  config.json (another quant_method, static activation scales, another fmt).
- `fp8_pairs`: every FP8 weight with its scales, checked against the block size (the grid is
  ceil(rows / br) x ceil(cols / bc): partial edge blocks); a weight without scales, scales
  without a weight, input scales or fused FP8 experts are one line naming the file.
- `Fp8Weight.ref`: what an import reads instead of the FP8 bytes (plan/pieces.Fp8Ref): the weight
  with its scales, dequantized where it is read (execute/fill.py: one float32 product per element,
  then the conversion's own cast, straight into the output; nothing is written elsewhere).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanokern.errors import NanokernError
from nanokern.io import dtypes
from nanokern.io.safetensors import TensorRef, map_array
from nanokern.ops import fp8_dequant
from nanokern.plan.fp8 import scale_name
from nanokern.plan.pieces import Fp8Ref

SCALE_DTYPES = ("F32", "BF16", "F16", "U8", "F8_E8M0")  # (one byte: ue8m0 exponents)


@dataclass
class Fp8Config:
    block: tuple[int, int] | None  # None: one scale per tensor
    scale_fmt: str | None
    not_converted: list[str]

    def block_of(self, shape) -> tuple[int, int]:
        return self.block if self.block is not None else (max(1, shape[0]), max(1, shape[1]))

    def describe(self) -> str:
        b = f"{self.block[0]}x{self.block[1]} blocks" if self.block else "one scale per tensor"
        return f"fp8 e4m3, {b}" + (f", {self.scale_fmt} scales" if self.scale_fmt else "")


@dataclass
class Fp8Weight:
    weight: TensorRef  # float8_e4m3fn [R, C]
    scales: TensorRef  # [ceil(R/br), ceil(C/bc)]
    block: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        (r, c), (br, bc) = self.weight.shape, self.block
        return (-(-r // br), -(-c // bc))

    def scales_f32(self, maps: dict) -> np.ndarray:
        return fp8_dequant.scales_host(map_array(self.scales, maps).reshape(self.grid))

    @property
    def ref(self) -> Fp8Ref:
        """The weight as a conversion's source: read dequantized (plan/pieces.py)."""
        return Fp8Ref(self.weight, self.scales, self.block)


def fp8_config(cfg: dict, where: Path) -> Fp8Config:
    q = cfg.get("quantization_config")
    method = q.get("quant_method")
    if method != "fp8":
        raise NanokernError(f"quantization_config.quant_method {method!r}: nanokern reads FP8 block-quantized folders "
                            f"only (quant_method fp8)", where)
    if q.get("fmt", "e4m3") != "e4m3":
        raise NanokernError(f"quantization_config.fmt {q.get('fmt')!r}: only e4m3 (float8_e4m3fn) weights are read", where)
    scheme = q.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise NanokernError(f"quantization_config.activation_scheme {scheme!r}: static activation scales are not "
                            f"supported (only dynamic)", where)
    block = q.get("weight_block_size")
    if block is not None and not (isinstance(block, list) and len(block) == 2
                                  and all(type(b) is int and b > 0 for b in block)):
        raise NanokernError(f"quantization_config.weight_block_size {block!r}: expected two positive integers", where)
    fmt = q.get("scale_fmt")
    if fmt not in (None, "ue8m0", "fp32", "float32"):
        raise NanokernError(f"quantization_config.scale_fmt {fmt!r}: not supported (float32 or ue8m0 scales)", where)
    skip = q.get("modules_to_not_convert") or []
    return Fp8Config(None if block is None else (block[0], block[1]), fmt, [s for s in skip if isinstance(s, str)])


def fp8_pairs(refs: dict[str, TensorRef], fc: Fp8Config) -> dict[str, Fp8Weight]:
    """name -> its FP8 weight and scales, for every float8_e4m3fn tensor of the folder."""
    out: dict[str, Fp8Weight] = {}
    for name, ref in refs.items():
        if name.endswith(("input_scale", "activation_scale")):
            raise NanokernError(f"{name}: static activation scales are not supported", ref.path)
        if ref.dtype != dtypes.FLOAT8_E4M3:
            continue
        if len(ref.shape) != 2:
            raise NanokernError(f"{name}: FP8 tensors of shape {list(ref.shape)} (fused experts) are not supported, "
                                f"only 2-D weights", ref.path)
        s = refs.get(scale_name(name))
        if s is None:
            raise NanokernError(f"{name} is float8_e4m3fn but has no {scale_name(name)}", ref.path)
        w = Fp8Weight(ref, s, fc.block_of(ref.shape))
        if s.dtype.code not in SCALE_DTYPES:
            raise NanokernError(f"{scale_name(name)}: scales of dtype {s.dtype} are not supported", s.path)
        if (fc.block is None and s.numel != 1) or (fc.block is not None and s.shape != w.grid):
            want = "one value" if fc.block is None else f"shape {list(w.grid)}"
            raise NanokernError(f"{scale_name(name)} has shape {list(s.shape)}; {name} {list(ref.shape)} in "
                                f"{w.block[0]}x{w.block[1]} blocks needs {want}", s.path)
        out[name] = w
    named = {scale_name(n) for n in out}
    for name, ref in refs.items():
        if name.endswith("_scale_inv") and name not in named:
            raise NanokernError(f"{name}: scales of a tensor that is not float8_e4m3fn", ref.path)
    return out


def folder_dtype(refs: dict[str, TensorRef]) -> dtypes.DType:
    """The dtype of the folder's unquantized weights (the embedding's): what transformers
    dequantizes into, and what `--dtype keep` writes."""
    e = refs.get("model.embed_tokens.weight")
    return e.dtype if e is not None and e.dtype in dtypes.FLOATS else dtypes.BFLOAT16


def summary(cfg: dict, refs: dict[str, TensorRef], where: Path) -> dict:
    """What inspect says of an FP8 folder: its scheme, its FP8 weights and their bytes."""
    fc = fp8_config(cfg, where)
    pairs = fp8_pairs(refs, fc)
    partial = sum(1 for w in pairs.values() if w.weight.shape[0] % w.block[0] or w.weight.shape[1] % w.block[1])
    return {"scheme": fc.describe(), "block": list(fc.block) if fc.block else None, "scale_fmt": fc.scale_fmt,
            "quantized": len(pairs), "with_partial_blocks": partial, "modules_to_not_convert": fc.not_converted,
            "fp8_bytes": sum(w.weight.nbytes + w.scales.nbytes for w in pairs.values())}
