"""FP8 exports (`--dtype fp8`): which HF tensors are block-quantized, and what config.json says.

Exactly the tensors transformers' FineGrainedFP8 quantizer takes: the 2-D Linear weights of
attention, MLP and experts (COLUMN, ROW and EXPERTS parameters) whose both dims divide by the
128 x 128 block. Each becomes a float8_e4m3fn tensor and its float32 `<name>_scale_inv`
[rows/128, cols/128] (for `x.weight`: `x.weight_scale_inv`), written in the same file, right after
it. Everything else (embeddings, lm_head, norms, biases, the MoE router, Linears that do not
divide) stays in the non-FP8 dtype and its module is listed in `modules_to_not_convert`.
"""

from __future__ import annotations

from nanokern.arch.kinds import Kind, Param
from nanokern.io import dtypes
from nanokern.plan.pieces import OutTensor

BLOCK = 128
QUANTIZED_KINDS = (Kind.COLUMN, Kind.ROW, Kind.EXPERTS)


def quantizable(param: Param, shape: tuple[int, ...], is_bias: bool) -> bool:
    return (not is_bias and param.kind in QUANTIZED_KINDS and len(shape) == 2
            and shape[0] % BLOCK == 0 and shape[1] % BLOCK == 0)


def scale_name(name: str) -> str:
    """transformers' name for a weight's scales (Fp8Quantize._quantize_one)."""
    return name.rsplit(".", 1)[0] + ".weight_scale_inv" if name.endswith(".weight") else name + "_scale_inv"


def quantized_pair(name: str, shape: tuple[int, ...], sources: list) -> list[OutTensor]:
    """The float8_e4m3fn weight and its scales (filled together: execute/quant.py)."""
    weight = OutTensor(name, shape, dtypes.FLOAT8_E4M3, sources, quant="fp8")
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


def quantization_config(unconverted: list[str]) -> dict:
    """config.json's quantization_config: what transformers' FineGrainedFP8Config and vLLM read."""
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
            "weight_block_size": [BLOCK, BLOCK], "modules_to_not_convert": unconverted}
