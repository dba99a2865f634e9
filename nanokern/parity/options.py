"""The parity forward's options, checked once when a model is set up (nothing in the forward
itself checks): the dtype, the numerics per op, the fault to inject, the input ids."""

from __future__ import annotations

import torch

from nanokern.io import dtypes

NUMERICS = ("hf", "fused", "nanotron")
FAULTS = ("nope_shift", "window+1", "window-1", "renormalize_topk", "no_shared_gate", "no_bias")
NORMS_AND_ROPE = ("input_norm", "post_norm", "final_norm", "rope")


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    d = dtypes.ALIASES.get(name)
    if d not in (dtypes.FLOAT32, dtypes.BFLOAT16):
        raise ValueError(f"unknown dtype {name!r}: choose fp32 (float32) or bf16 (bfloat16)")
    return d.torch


def op_numerics(numerics: str, config_class: str) -> dict[str, str]:
    """The rounding rule ("hf" or "fused") of each RMSNorm and of RoPE. "nanotron": Nanotron's
    own forward per config class (LlamaConfig fuses them all; Qwen2Config computes
    input_layernorm with the plain RMSNorm and the rest fused)."""
    if numerics not in NUMERICS:
        raise ValueError(f"unknown numerics {numerics!r}: choose one of {', '.join(NUMERICS)}")
    if numerics != "nanotron":
        return dict.fromkeys(NORMS_AND_ROPE, numerics)
    return {"input_norm": "hf" if config_class == "qwen2" else "fused", "post_norm": "fused", "final_norm": "fused",
            "rope": "fused"}


def check_fault(fault: str | None, spec) -> str | None:
    """A fault that the checkpoint has nothing to break with raises, so that a negative control
    never passes vacuously."""
    if fault is None:
        return None
    if fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}: choose one of {', '.join(FAULTS)}")
    applies = {
        "nope_shift": spec.no_rope_layer is not None,
        "window+1": spec.sliding_window is not None,
        "window-1": spec.sliding_window is not None and spec.sliding_window > 1,
        "renormalize_topk": spec.moe is not None,
        "no_shared_gate": spec.moe is not None and spec.moe.enable_shared_expert,
        "no_bias": spec.attention_bias,
    }[fault]
    if not applies:
        raise ValueError(f"fault {fault!r} does not apply to this checkpoint ({', '.join(spec.features()) or 'plain LLaMA'})")
    return fault


def check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    if ids.dim() != 2:
        raise ValueError(f"input ids must be [batch, seq], got {tuple(ids.shape)}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"token ids must be in [0, {vocab_size})")
