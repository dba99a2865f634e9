"""Parameter kinds: how one Nanotron parameter is stored and which HF tensors it holds.

Written once here, read by the Nanotron reader and writer, the HF reader and writer, the parity
forward and the synthetic bench writer. A family table (nanokern/arch/<family>.py) is a list of
`Param`s built from these kinds.

Kinds (Nanotron's storage, docs/nanotron-format.md §1-§3, §11):
- VOCAB: [V, H] rows split over TP (embedding, lm_head); V may be padded.
- COLUMN: [sum(parts), H] rows split over TP part by part (contiguous_chunks), optional bias
  [sum(parts)] split the same way (qkv_proj, gate_up_proj). A part with `rope` has its rows
  permuted per head when the checkpoint uses interleaved RoPE (weights and biases alike).
- ROW: [H, in] columns split over TP (o_proj, down_proj).
- REPLICATED: one unsharded file, no rank suffix, empty metadata (norms, router, shared gate).
- EXPERTS: [E, in, sum(parts)] input-major (y = x @ W), unsharded like REPLICATED; HF holds one
  [part, in] tensor per expert and part (the transpose).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable

from nanokern.arch.spec import ModelSpec

Size = Callable[[ModelSpec], int]
When = Callable[[ModelSpec, int], bool]  # (spec, layer) -> present


class Kind(enum.Enum):
    VOCAB = "vocab"
    COLUMN = "column"
    ROW = "row"
    REPLICATED = "replicated"
    EXPERTS = "experts"


@dataclass(frozen=True)
class Part:
    hf: str  # HF name (relative to model.layers.{i}. for layer params); "{e}" for the expert index
    size: Size  # rows of the part (COLUMN/VOCAB/REPLICATED/ROW), or its width in the last dim (EXPERTS)
    rope: bool = False


def always(_spec: ModelSpec, _layer: int) -> bool:
    return True


@dataclass(frozen=True)
class Param:
    nt: str  # Nanotron name (relative to model.decoder.{i}.pp_block. for layer params)
    kind: Kind
    parts: tuple[Part, ...]
    cols: Size | None = None  # the input dimension (None: a 1-D tensor)
    layer: bool = True
    when: When = always  # present in the Nanotron checkpoint
    hf_when: When | None = None  # present in HF (None: as `when`); HF-only tensors are written as zeros
    bias: Callable[[ModelSpec], bool] | None = None  # COLUMN: has a bias in Nanotron
    hf_bias: Callable[[ModelSpec], bool] | None = None  # COLUMN: has a bias in HF (None: as `bias`)
    fp32: bool = False  # stored float32 whatever the model dtype (Nanotron's MoE router)

    def in_nt(self, spec: ModelSpec, layer: int) -> bool:
        return self.when(spec, layer)

    def in_hf(self, spec: ModelSpec, layer: int) -> bool:
        return (self.hf_when or self.when)(spec, layer)

    def has_bias(self, spec: ModelSpec) -> bool:
        return self.bias is not None and self.bias(spec)

    def has_hf_bias(self, spec: ModelSpec) -> bool:
        f = self.hf_bias or self.bias
        return f is not None and f(spec)

    def nt_name(self, layer: int | None = None, leaf: str | None = None) -> str:
        name = self.nt if leaf is None else self.nt.rsplit(".", 1)[0] + "." + leaf
        return f"model.decoder.{layer}.pp_block.{name}" if self.layer else name

    def nt_bias_name(self, layer: int | None = None) -> str:
        return self.nt_name(layer, "bias")

    def hf_name(self, part: Part, layer: int | None = None, expert: int | None = None, bias: bool = False) -> str:
        name = part.hf.format(e=expert) if expert is not None else part.hf
        if bias:
            name = name.rsplit(".", 1)[0] + ".bias"
        return f"model.layers.{layer}.{name}" if self.layer else name

    def sizes(self, spec: ModelSpec, vocab: int | None = None) -> list[int]:
        if self.kind is Kind.VOCAB:
            return [spec.vocab_size if vocab is None else vocab]
        return [p.size(spec) for p in self.parts]

    def nt_shape(self, spec: ModelSpec, vocab: int | None = None) -> tuple[int, ...]:
        total = sum(self.sizes(spec, vocab))
        if self.kind is Kind.EXPERTS:
            return (spec.moe.num_experts, self.cols(spec), total)
        return (total,) if self.cols is None else (total, self.cols(spec))

    def split_dim(self) -> int | None:
        """The dimension split over TP (None: not sharded)."""
        return {Kind.VOCAB: 0, Kind.COLUMN: 0, Kind.ROW: 1}.get(self.kind)

    def hf_tensors(self, spec: ModelSpec, layer: int | None = None, vocab: int | None = None):
        """(HF name, shape, part, expert, is_bias) of every HF tensor this parameter holds."""
        out = []
        experts = range(spec.moe.num_experts) if self.kind is Kind.EXPERTS else [None]
        for e in experts:
            for part, n in zip(self.parts, self.sizes(spec, vocab)):
                if self.kind is Kind.EXPERTS:
                    shape = (n, self.cols(spec))
                elif self.kind is Kind.ROW:
                    shape = (n, self.cols(spec))
                else:
                    shape = (n,) if self.cols is None else (n, self.cols(spec))
                out.append((self.hf_name(part, layer, e), shape, part, e, False))
                if self.kind is Kind.COLUMN and self.has_hf_bias(spec):
                    out.append((self.hf_name(part, layer, e, bias=True), (n,), part, e, True))
        return out
