"""FP8 exports (`--dtype fp8`): which HF tensors are block-quantized, and what config.json says.

Exactly the tensors transformers' FineGrainedFP8 quantizer takes: the 2-D Linear weights of
attention, MLP and experts (COLUMN, ROW and EXPERTS parameters) whose both dims divide by the
128 x 128 block. Each becomes a float8_e4m3fn tensor and its float32 `<name>_scale_inv`
[rows/128, cols/128] (for `x.weight`: `x.weight_scale_inv`), written in the same file, right after
it. Everything else (embeddings, lm_head, norms, biases, the MoE router, Linears that do not
divide) stays in the non-FP8 dtype and its module is listed in `modules_to_not_convert`.

Scales (`--fp8-scale`): "float", 1 / the block's scale (transformers' default, DeepSeek-V3); or
"ue8m0", rounded up to a power of two (ops/fp8_quant.py), the block quantized by its reciprocal, as
transformers' `scale_fmt="ue8m0"` and DeepSeek-V3.1 make them; config.json then says
`"scale_fmt": "ue8m0"` (what transformers and vLLM read). They are written float32, as
DeepSeek-V3.1 ships them: vLLM loads them as any float32 scales, transformers into its
float8_e8m0fnu scales (exactly: powers of two).
"""

from __future__ import annotations

from nanokern.arch.kinds import Kind, Param
from nanokern.errors import NanokernError
from nanokern.io import dtypes
from nanokern.plan.pieces import OutTensor

BLOCK = 128
QUANTIZED_KINDS = (Kind.COLUMN, Kind.ROW, Kind.EXPERTS)
SCALE_FORMATS = ("float", "ue8m0")  # transformers' FineGrainedFP8Config scale_fmt values


def check_scale_fmt(scale_fmt: str, dtype: str | None, where=None) -> str:
    """The scale format of an export to `dtype` (of the model at `where`): ue8m0 only with FP8."""
    if scale_fmt not in SCALE_FORMATS:
        raise NanokernError(f"fp8 scale format {scale_fmt!r}: choose {' or '.join(SCALE_FORMATS)}", where)
    if scale_fmt != "float" and not dtypes.is_fp8(dtype):
        raise NanokernError(f"--fp8-scale {scale_fmt} describes FP8 exports: add --dtype fp8 (the dtype is {dtype})", where)
    return scale_fmt


def quantizable(param: Param, shape: tuple[int, ...], is_bias: bool) -> bool:
    return (not is_bias and param.kind in QUANTIZED_KINDS and len(shape) == 2
            and shape[0] % BLOCK == 0 and shape[1] % BLOCK == 0)


def scale_name(name: str) -> str:
    """transformers' name for a weight's scales (Fp8Quantize._quantize_one)."""
    return name.rsplit(".", 1)[0] + ".weight_scale_inv" if name.endswith(".weight") else name + "_scale_inv"


def quantized_pair(name: str, shape: tuple[int, ...], sources: list, scale_fmt: str = "float") -> list[OutTensor]:
    """The float8_e4m3fn weight and its scales (filled together: execute/quant.py)."""
    weight = OutTensor(name, shape, dtypes.FLOAT8_E4M3, sources, quant="fp8", scale_fmt=scale_fmt)
    scales = OutTensor(scale_name(name), (shape[0] // BLOCK, shape[1] // BLOCK), dtypes.FLOAT32, [],
                       quant="scale_inv", scale_of=name)
    return [weight, scales]


def module_of(name: str) -> str:
    return name.rsplit(".", 1)[0]


def not_converted(names: list[str]) -> list[str]:
    """modules_to_not_convert: the modules of the weights left unquantized; experts are one module
    in transformers (`...mlp.experts`), named so when they are not quantized."""
    out = []
    for n in names:
        m = module_of(n)
        parts = m.split(".")
        if "experts" in parts:
            m = ".".join(parts[: parts.index("experts") + 1])
        if m not in out:
            out.append(m)
    return out


def quantization_config(unconverted: list[str], scale_fmt: str = "float") -> dict:
    """config.json's quantization_config: what transformers' FineGrainedFP8Config and vLLM read
    (scale_fmt only for ue8m0: float is everyone's default)."""
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": unconverted,
            **({"scale_fmt": scale_fmt} if scale_fmt != "float" else {})}
