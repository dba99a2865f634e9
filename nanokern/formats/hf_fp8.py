"""HF FP8 folders read: block-quantized float8_e4m3fn weights, each with its `weight_scale_inv`
grid (nanokern's `--dtype fp8` exports, DeepSeek-V3 / Qwen3 FP8 releases: config.json's
`quantization_config` {quant_method fp8, fmt e4m3, activation_scheme dynamic, weight_block_size}).

- `fp8_config`: the quantization_config, checked; what is not supported is one line naming
  config.json (another quant_method, static activation scales, another fmt).
- `fp8_pairs`: every FP8 weight with its scales, checked against the block size (the grid is
  ceil(rows / br) x ceil(cols / bc): partial edge blocks); a weight without scales, scales
  without a weight, input scales or fused FP8 experts are one line naming the file.
- `dequantize_to_file`: what an import reads instead of the FP8 bytes: every FP8 weight
  dequantized (ops/fp8_dequant.py: one float32 product per element, the cast to --dtype is the
  conversion's own) into one float32 safetensors file in a temporary folder of its own, a band of
  rows at a time (memory: one band). The folder is removed when the process ends or when
  `remove_temporaries` is called.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanokern.errors import NanokernError, OutOfSpace
from nanokern.io import dtypes
from nanokern.io.safetensors import TensorRef, build_header, close_maps, map_array, read_header
from nanokern.io.units import human_bytes
from nanokern.ops import fp8_dequant
from nanokern.plan.fp8 import scale_name

SCALE_DTYPES = ("F32", "BF16", "F16", "U8", "F8_E8M0")  # (one byte: ue8m0 exponents)
BAND_BYTES = 16 << 20  # float32 output per band of the temporary file


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


_TEMPORARIES: list[str] = []


def remove_temporaries() -> None:
    """Remove every temporary folder this process made (each made by tempfile.mkdtemp here)."""
    while _TEMPORARIES:
        shutil.rmtree(_TEMPORARIES.pop(), ignore_errors=True)


atexit.register(remove_temporaries)


def dequantize_to_file(pairs: dict[str, Fp8Weight], source: Path) -> dict[str, TensorRef]:
    """Every FP8 weight dequantized to float32 in one temporary safetensors file; name -> its ref."""
    names = sorted(pairs)
    head, _ = build_header([(n, dtypes.FLOAT32, pairs[n].weight.shape) for n in names], None)
    size = len(head) + sum(pairs[n].weight.numel * 4 for n in names)
    tmp_root = tempfile.gettempdir()
    free = shutil.disk_usage(tmp_root).free
    if free < size:
        raise OutOfSpace(f"dequantizing the FP8 weights of {source} needs {human_bytes(size)} of temporary space, "
                         f"{human_bytes(free)} free (set TMPDIR to a larger disk)", tmp_root)
    folder = tempfile.mkdtemp(prefix="nanokern-fp8-", dir=tmp_root)
    _TEMPORARIES.append(folder)
    path = os.path.join(folder, "dequantized.safetensors")
    maps: dict = {}
    try:
        with open(path, "xb") as f:
            f.write(head)
            for n in names:
                _write_dequantized(f, pairs[n], maps)
    finally:
        close_maps(maps.values())
    return read_header(path).tensors


def _write_dequantized(f, w: Fp8Weight, maps: dict) -> None:
    rows, cols = w.weight.shape
    br = w.block[0]
    q = map_array(w.weight, maps)
    s = w.scales_f32(maps)
    step = max(1, BAND_BYTES // max(1, cols * 4 * br)) * br  # whole row blocks
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        f.write(fp8_dequant.dequantize_host(q[r0:r1], s[r0 // br : -(-r1 // br)], w.block).tobytes())


def summary(cfg: dict, refs: dict[str, TensorRef], where: Path) -> dict:
    """What inspect says of an FP8 folder: its scheme, its FP8 weights and their bytes."""
    fc = fp8_config(cfg, where)
    pairs = fp8_pairs(refs, fc)
    partial = sum(1 for w in pairs.values() if w.weight.shape[0] % w.block[0] or w.weight.shape[1] % w.block[1])
    return {"scheme": fc.describe(), "block": list(fc.block) if fc.block else None, "scale_fmt": fc.scale_fmt,
            "quantized": len(pairs), "with_partial_blocks": partial, "modules_to_not_convert": fc.not_converted,
            "fp8_bytes": sum(w.weight.nbytes + w.scales.nbytes for w in pairs.values())}
