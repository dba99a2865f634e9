"""LLaMA: LlamaForCausalLM. No bias, RoPE on every layer, full causal attention, dense MLPs."""

from __future__ import annotations

from pathlib import Path

from nanokern.arch import decoder as D
from nanokern.arch.family import Family
from nanokern.arch.hf_config import read_common, refuse_keys, write_common
from nanokern.arch.spec import ModelSpec

PARAMS = (D.EMBED, D.qkv(), D.O_PROJ, *D.dense_mlp(), D.INPUT_NORM, D.POST_NORM, D.FINAL_NORM, D.LM_HEAD)


def refuses(spec: ModelSpec) -> str | None:
    if spec.attention_bias:
        return "q/k/v biases (LlamaForCausalLM's attention_bias also puts one on o_proj)"
    if spec.no_rope_layer is not None:
        return "NoPE layers (no_rope_layer)"
    if spec.sliding_window is not None:
        return "a sliding window"
    if spec.moe is not None:
        return "MoE layers"
    return None


def hf_config(spec: ModelSpec, dtype: str, vocab: int) -> dict:
    cfg = write_common(spec, "LlamaForCausalLM", "llama", dtype, vocab)
    cfg.update({"attention_bias": False, "head_dim": spec.head_dim, "mlp_bias": False, "pretraining_tp": 1})
    return dict(sorted(cfg.items()))


def spec_from_hf(cfg: dict, where: Path) -> ModelSpec:
    refuse_keys(cfg, where, {"attention_bias": "Nanotron's LLaMA has no biases", "mlp_bias": "Nanotron has no MLP biases"})
    return read_common(cfg, where)


FAMILY = Family("llama", "LlamaForCausalLM", "llama", PARAMS, refuses, hf_config, spec_from_hf)
