"""The one dtype table: safetensors codes, torch's names, the short names users type, sizes, and
the numpy type that holds the bits. Nothing is imported here (the CLI reads the spellings for
its --help): torch and numpy are imported by the properties that return their types.

`DType.torch` gives the torch dtype (importing torch then) for the code that computes with
tensors (parity, generation, verify, the torch/CUDA/Triton backends).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DType:
    name: str  # torch's name, also HF's `torch_dtype`: "bfloat16"
    code: str  # safetensors' header code: "BF16"
    itemsize: int
    storage: str  # numpy type of the bits ("<u2" for bfloat16, which numpy lacks)
    short: str = ""  # the short spelling: "bf16"
    kind: int = -1  # the gather_cast kernels' code (0 fp32, 1 bf16, 2 fp16); -1: not a kernel dtype

    def __str__(self) -> str:
        return self.name

    def __eq__(self, other) -> bool:
        if isinstance(other, DType):
            return self.name == other.name
        if other is None:
            return False
        # a torch dtype (or a name) compared with a DType is a bug that would pass silently
        raise TypeError(f"comparing nanokern DType {self.name} with {other!r}: use .torch or dtypes.parse()")

    def __hash__(self) -> int:
        return hash(self.name)

    @property
    def torch(self):
        import torch

        return getattr(torch, self.name)

    @property
    def np(self):
        import numpy

        return numpy.dtype(self.storage)


FLOAT32 = DType("float32", "F32", 4, "<f4", "fp32", 0)
BFLOAT16 = DType("bfloat16", "BF16", 2, "<u2", "bf16", 1)
FLOAT16 = DType("float16", "F16", 2, "<f2", "fp16", 2)
# 128 x 128-block FP8 (--dtype fp8: ops/fp8_quant.py): an output dtype; read back (verify, inspect)
# but not converted from (not in FLOATS: an import refuses it, naming the tensor)
FLOAT8_E4M3 = DType("float8_e4m3fn", "F8_E4M3", 1, "u1", "fp8")
TABLE = (
    DType("float64", "F64", 8, "<f8", "fp64"), FLOAT32, FLOAT16, BFLOAT16,
    DType("int64", "I64", 8, "<i8"), DType("int32", "I32", 4, "<i4"), DType("int16", "I16", 2, "<i2"),
    DType("int8", "I8", 1, "i1"), DType("uint8", "U8", 1, "u1"), DType("bool", "BOOL", 1, "?"), FLOAT8_E4M3,
)
BY_CODE = {d.code: d for d in TABLE}
FLOATS = (FLOAT32, BFLOAT16, FLOAT16)  # what conversions read and write


FP8_SPELLINGS = (FLOAT8_E4M3.short, FLOAT8_E4M3.name)  # --dtype fp8 / float8_e4m3fn (HF exports)


def choices(keep: bool) -> list[str]:
    """The spellings a command line takes: fp32 bf16 fp16, ("keep", "fp8") and torch's float32 bfloat16
    float16 (and float8_e4m3fn): keep=True is an output dtype, which may also be FP8."""
    out = [*(d.short for d in FLOATS), *(["keep", FLOAT8_E4M3.short] if keep else []), *(d.name for d in FLOATS)]
    return out + ([FLOAT8_E4M3.name] if keep else [])


def is_fp8(name: str | None) -> bool:
    """Whether an output dtype name asks for FP8 block quantization (fp8, float8_e4m3fn)."""
    return name is not None and str(name).removeprefix("torch.") in FP8_SPELLINGS
# What a user may type for a float dtype: the short names, torch's names, and torch's aliases.
ALIASES = {**{d.short: d for d in FLOATS}, **{d.name: d for d in FLOATS}, "half": FLOAT16, "float": FLOAT32}


def parse(name: str) -> DType:
    """A float dtype from any of its spellings (bf16, bfloat16, torch.bfloat16, ...)."""
    key = str(name).removeprefix("torch.")
    if key not in ALIASES:
        raise ValueError(f"unknown dtype {name!r}: choose one of {', '.join(sorted(ALIASES))}")
    return ALIASES[key]


def resolve(name: str, source: DType) -> DType:
    """An output dtype by its name (bf16 or torch's bfloat16, ...); keep: the source's."""
    if name == "keep":
        return source
    if is_fp8(name):
        raise ValueError(f"dtype {name!r} is for HF exports (--to hf): a Nanotron checkpoint keeps bf16, fp16 or fp32")
    try:
        return parse(name)
    except ValueError:
        raise ValueError(f"dtype {name!r}: choose bf16, fp16, fp32 (or torch's bfloat16, float16, float32) or keep") from None


def of_torch(dtype) -> DType:
    """The entry for a torch dtype (torch.float32 -> FLOAT32)."""
    name = str(dtype).removeprefix("torch.")
    for d in TABLE:
        if d.name == name:
            return d
    raise ValueError(f"dtype {dtype} has no safetensors code")
