"""A model family: one HF class and the Nanotron parameters that map onto it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from nanokern.arch import decoder
from nanokern.arch.kinds import Param
from nanokern.arch.spec import ModelSpec


@dataclass(frozen=True)
class ZeroMeansAbsent:
    """HF tensors the class always has but a Nanotron model may lack (Qwen2's q/k/v biases, Qwen2Moe's
    shared expert): when every one is exactly +0.0, import turns the feature off instead of
    writing zeros into Nanotron, so an export of such a model imports back to itself."""

    what: str
    names: Callable[[ModelSpec], list[str]]  # the HF tensors that must all be zero
    off: Callable[[ModelSpec], ModelSpec]  # the spec without the feature


@dataclass(frozen=True)
class Family:
    name: str  # short name (demo --arch, bench --arch)
    hf_class: str  # config.json "architectures"
    model_type: str
    params: tuple[Param, ...]  # global and per-layer parameters, in HF state_dict order
    refuses: Callable[[ModelSpec], str | None]  # why this class cannot hold the model exactly (None: it can)
    hf_config: Callable[[ModelSpec, str, int], dict]  # (spec, dtype name, vocab) -> config.json
    spec_from_hf: Callable[[dict, Path], ModelSpec]  # config.json -> spec (refusing what Nanotron cannot hold)
    layer_cost: Callable[[ModelSpec], int] = decoder.layer_cost  # PP cost of a decoder layer
    zero_means_absent: tuple[ZeroMeansAbsent, ...] = ()

    def layer_params(self) -> list[Param]:
        return [p for p in self.params if p.layer]

    def hf_tensors(self, spec: ModelSpec, vocab: int | None = None):
        """(HF name, shape, Param, Part, layer, expert, is_bias) in state_dict order."""
        out = []
        globals_ = [p for p in self.params if not p.layer]
        head = [p for p in globals_ if p.parts[0].hf == "model.embed_tokens.weight"]
        tail = [p for p in globals_ if p not in head]
        order = [(p, None) for p in head]
        order += [(p, i) for i in range(spec.num_hidden_layers) for p in self.layer_params()]
        order += [(p, None) for p in tail]
        for p, i in order:
            if not p.in_hf(spec, 0 if i is None else i):
                continue
            for name, shape, part, e, is_bias in p.hf_tensors(spec, i, vocab):
                out.append((name, shape, p, part, i, e, is_bias))
        return out
