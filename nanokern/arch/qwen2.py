"""Qwen2: Qwen2ForCausalLM. q/k/v biases (always present in HF: zeros when Nanotron has none),
optionally a sliding window on every layer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nanokern.arch import decoder as D
from nanokern.arch.family import Family, ZeroMeansAbsent
from nanokern.arch.hf_config import read_common, refuse_keys, sliding_from_hf, write_common
from nanokern.arch.spec import ModelSpec

PARAMS = (D.EMBED, D.qkv(bias=lambda s: s.attention_bias, hf_bias=lambda s: True), D.O_PROJ, *D.dense_mlp(),
          D.INPUT_NORM, D.POST_NORM, D.FINAL_NORM, D.LM_HEAD)


def refuses(spec: ModelSpec) -> str | None:
    if spec.no_rope_layer is not None:
        return "NoPE layers (no_rope_layer)"
    if spec.moe is not None:
        return "MoE layers"
    return None


def hf_config(spec: ModelSpec, dtype: str, vocab: int) -> dict:
    cfg = write_common(spec, "Qwen2ForCausalLM", "qwen2", dtype, vocab)
    w = spec.sliding_window
    n = spec.num_hidden_layers
    cfg.update({
        "layer_types": ["sliding_attention" if w else "full_attention"] * n,
        "max_window_layers": 0 if w else n,
        "sliding_window": w,
        "use_sliding_window": w is not None,
    })
    return dict(sorted(cfg.items()))


def spec_from_hf(cfg: dict, where: Path) -> ModelSpec:
    refuse_keys(cfg, where, {"mlp_bias": "Nanotron has no MLP biases"})
    return read_common(cfg, where, attention_bias=True, sliding_window=sliding_from_hf(cfg, where))


def _biases(spec: ModelSpec) -> list[str]:
    return [f"model.layers.{i}.self_attn.{x}_proj.bias" for i in range(spec.num_hidden_layers) for x in "qkv"]


NO_BIAS = ZeroMeansAbsent("q/k/v biases", _biases, lambda s: dataclasses.replace(s, attention_bias=False))
FAMILY = Family("qwen2", "Qwen2ForCausalLM", "qwen2", PARAMS, refuses, hf_config, spec_from_hf, zero_means_absent=(NO_BIAS,))
