"""Qwen2-MoE: Qwen2MoeForCausalLM. The layers of moe_config.layers hold a float32 router,
experts and a gated shared expert (routing: softmax over all experts, top-k, no renormalisation:
norm_topk_prob false); the other layers are dense MLPs (mlp_only_layers)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from nanokern.arch import decoder as D
from nanokern.arch.family import Family, ZeroMeansAbsent
from nanokern.arch.hf_config import read_common, refuse_keys, sliding_from_hf, write_common
from nanokern.arch.spec import ModelSpec, MoeSpec
from nanokern.errors import NanokernError

PARAMS = (D.EMBED, D.qkv(bias=lambda s: s.attention_bias), D.O_PROJ, *D.MOE, *D.dense_mlp(),
          D.INPUT_NORM, D.POST_NORM, D.FINAL_NORM, D.LM_HEAD)


def refuses(spec: ModelSpec) -> str | None:
    if spec.no_rope_layer is not None:
        return "NoPE layers (no_rope_layer)"
    if spec.moe is None:
        return "no MoE layers (Qwen2MoeForCausalLM needs moe_config)"
    return None


def hf_config(spec: ModelSpec, dtype: str, vocab: int) -> dict:
    m = spec.moe
    n, w = spec.num_hidden_layers, spec.sliding_window
    cfg = write_common(spec, "Qwen2MoeForCausalLM", "qwen2_moe", dtype, vocab)
    cfg.update({
        "decoder_sparse_step": 1,
        "layer_types": ["sliding_attention" if w else "full_attention"] * n,
        "max_window_layers": 0 if w else n,
        "mlp_only_layers": [i for i in range(n) if i not in m.layers],
        "moe_intermediate_size": m.moe_intermediate_size,
        "norm_topk_prob": False,
        "num_experts": m.num_experts,
        "num_experts_per_tok": m.top_k,
        "output_router_logits": False,
        "qkv_bias": spec.attention_bias,
        "router_aux_loss_coef": m.router_aux_loss_coef,
        "shared_expert_intermediate_size": m.shared_expert_intermediate_size,
        "sliding_window": w,
        "use_sliding_window": w is not None,
    })
    return dict(sorted(cfg.items()))


def spec_from_hf(cfg: dict, where: Path) -> ModelSpec:
    refuse_keys(cfg, where, {"norm_topk_prob": "Nanotron does not renormalise the top-k routing weights"})
    mwl = cfg.get("max_window_layers", 28)  # Qwen2MoeConfig's default: windows layers 0, 2, 4, ... below it
    n = cfg.get("num_hidden_layers")
    step = cfg.get("decoder_sparse_step", 1)
    only = cfg.get("mlp_only_layers") or []
    if not isinstance(n, int) or not isinstance(step, int) or step < 1:
        raise NanokernError(f"decoder_sparse_step must be a positive integer, not {step!r}", where)
    layers = [i for i in range(n) if i not in only and (i + 1) % step == 0]
    need = ("num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size")
    missing = [k for k in need if not isinstance(cfg.get(k), int) or cfg[k] < 1]
    if missing:
        raise NanokernError(f"config.json lacks a positive integer {missing[0]!r}", where)
    moe = MoeSpec(cfg["num_experts"], cfg["num_experts_per_tok"], cfg["moe_intermediate_size"],
                  cfg["shared_expert_intermediate_size"], layers,
                  router_aux_loss_coef=cfg.get("router_aux_loss_coef", 0.01))
    return read_common(cfg, where, attention_bias=bool(cfg.get("qkv_bias", True)), moe=moe,
                       sliding_window=sliding_from_hf(cfg, where, default_slides=lambda i: (i + 1) % 2 == 1 and i < mwl))


def _shared_expert(spec: ModelSpec) -> list[str]:
    return [f"model.layers.{i}.mlp.{t}.weight" for i in spec.moe.layers
            for t in ("shared_expert.gate_proj", "shared_expert.up_proj", "shared_expert.down_proj", "shared_expert_gate")]


NO_SHARED_EXPERT = ZeroMeansAbsent("shared expert", _shared_expert, lambda s: dataclasses.replace(
    s, moe=dataclasses.replace(s.moe, enable_shared_expert=False)))
FAMILY = Family("qwen2_moe", "Qwen2MoeForCausalLM", "qwen2_moe", PARAMS, refuses, hf_config, spec_from_hf,
                zero_means_absent=(NO_SHARED_EXPERT,))
