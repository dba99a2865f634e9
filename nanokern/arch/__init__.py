"""The architecture tables: one `Family` per HF class, and how a model picks its class."""

from __future__ import annotations

from pathlib import Path

from nanokern.arch import llama, qwen2, qwen2_moe, smollm3
from nanokern.arch.family import Family
from nanokern.arch.kinds import Kind, Param, Part
from nanokern.arch.spec import ModelSpec, MoeSpec
from nanokern.errors import NanokernError

# In order of preference: a model exports to the first class that holds it exactly.
FAMILIES: tuple[Family, ...] = (llama.FAMILY, qwen2.FAMILY, smollm3.FAMILY, qwen2_moe.FAMILY)
BY_CLASS = {f.hf_class: f for f in FAMILIES}
BY_NAME = {f.name: f for f in FAMILIES}

__all__ = ["FAMILIES", "Family", "Kind", "ModelSpec", "MoeSpec", "Param", "Part", "choose", "family"]


def family(name: str) -> Family:
    """A family by HF class name (LlamaForCausalLM) or short name (llama)."""
    f = BY_CLASS.get(name) or BY_NAME.get(name)
    if f is None:
        raise ValueError(f"unknown architecture {name!r}: choose one of {', '.join(BY_CLASS)}")
    return f


def choose(spec: ModelSpec, hf_arch: str | None, where: Path | str) -> Family:
    """The HF class for a model: hf_arch when given (refused when it cannot hold the model
    exactly), else the first in FAMILIES that can."""
    if hf_arch:
        f = family(hf_arch)
        why = f.refuses(spec)
        if why:
            raise NanokernError(f"--hf-arch {f.hf_class} cannot hold this model exactly: {why}", where)
        return f
    for f in FAMILIES:
        if f.refuses(spec) is None:
            return f
    raise NanokernError(f"no transformers class holds this combination exactly: {', '.join(spec.features())}", where)
