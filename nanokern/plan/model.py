"""The logical model every conversion goes through.

A source (a Nanotron checkpoint in any TP x PP layout, or a HF folder) is read into a `Model`:
the hyper-parameters (`ModelSpec`), the family table that names its tensors, and, for every
tensor under its HF name and in HF's convention (q/k rows half-split, qkv and gate/up unfused,
one [out, in] matrix per expert), the `Block`s of on-disk bytes that make it up. No tensor data is read: a block says "these rows/columns of that file's tensor are
those rows/columns of the logical tensor". Writers then describe each output tensor as rows of
logical tensors, and plan/pieces.py composes the two into row gathers over source files.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from nanokern.arch.family import Family
from nanokern.arch.spec import ModelSpec
from nanokern.io.dtypes import DType
from nanokern.io.safetensors import TensorRef


@dataclass
class Block:
    """Rows `src_rows` x columns [src_col0, src_col0+ncols) of a source tensor (viewed 2-D,
    transposed when `transpose`) are rows `dst_rows` x columns [dst_col0, dst_col0+ncols) of a
    logical tensor."""

    ref: TensorRef  # shape as 2-D (1-D tensors are [N, 1])
    src_rows: np.ndarray
    src_col0: int
    dst_rows: np.ndarray
    dst_col0: int
    ncols: int
    transpose: bool = False


@dataclass
class LogicalTensor:
    name: str
    shape: tuple[int, ...]
    dtype: DType
    blocks: list[Block] = field(default_factory=list)

    @property
    def shape2d(self) -> tuple[int, int]:
        return shape2d(self.shape)


def shape2d(shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D view every plan works on: 1-D [N] as [N, 1] (so bias and norm elements are rows
    that a row gather can permute), [A, ..., Z] as [A*...*Y, Z]."""
    if len(shape) == 1:
        return (shape[0], 1)
    return (int(np.prod(shape[:-1])), shape[-1])


@dataclass
class NanotronLayout:
    """What a Nanotron source holds beyond its tensors: its layout, and the configs a reshard
    carries over."""

    step_dir: str
    tp: int
    pp: int
    rope_interleaved: bool
    files: int
    pp_owner: dict[str, int]  # block ("embedding", "layer 3", ...) -> PP rank
    bad_naming: bool
    config_class: str  # "llama" (LlamaConfig) or "qwen2" (Qwen2Config)
    model_config: dict  # model_config.json as stored
    step: str = "0"
    checkpoint_metadata: dict | None = None
    config_yaml: dict | None = None


@dataclass
class HfLayout:
    files: int
    sharded: bool  # with a model.safetensors.index.json
    nanotron_source: tuple | None = None  # a nanokern export's (config class, fields, rope_interleaved): see hf.py


@dataclass
class Model:
    spec: ModelSpec
    family: Family  # the HF class the tensors are named for
    tensors: dict[str, LogicalTensor]
    origin: str  # "nanotron" or "hf"
    path: str
    warnings: list[str] = field(default_factory=list)
    layout: NanotronLayout | HfLayout | None = None

    @property
    def dtype(self) -> DType:
        return next(iter(self.tensors.values())).dtype

    def num_parameters(self) -> int:
        n = 0
        for t in self.tensors.values():
            k = 1
            for s in t.shape:
                k *= s
            n += k
        return n


def as_2d(ref: TensorRef) -> TensorRef:
    return ref if len(ref.shape) == 2 else TensorRef(ref.path, ref.offset, ref.dtype, shape2d(ref.shape))


def expert_view(ref: TensorRef, e: int) -> TensorRef:
    """Expert e of an [E, A, B] tensor, as an [A, B] tensor."""
    _, a, b = ref.shape
    return TensorRef(ref.path, ref.offset + e * a * b * ref.dtype.itemsize, ref.dtype, (a, b))


def whole_block(ref: TensorRef) -> Block:
    """The whole of a source tensor as the whole of a logical tensor."""
    r = as_2d(ref)
    rows = np.arange(r.shape[0], dtype=np.int64)
    return Block(r, rows, 0, rows, 0, r.shape[1])
