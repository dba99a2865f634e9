"""SmolLM3: SmolLM3ForCausalLM. Every no_rope_layer-th layer (from 1) has no RoPE; a sliding
window, when set, is on the RoPE layers only (layer_types given explicitly: SmolLM3's default puts
it on the NoPE layers)."""

from __future__ import annotations

from pathlib import Path

from nanokern.arch import llama
from nanokern.arch.family import Family
from nanokern.arch.hf_config import read_common, refuse_keys, sliding_from_hf, write_common
from nanokern.arch.spec import ModelSpec
from nanokern.errors import NanokernError

PARAMS = llama.PARAMS  # the same tensors as LLaMA: NoPE and the window change only the config


def refuses(spec: ModelSpec) -> str | None:
    if spec.attention_bias:
        return "q/k/v biases (SmolLM3's attention_bias also puts one on o_proj)"
    if spec.moe is not None:
        return "MoE layers"
    return None


def hf_config(spec: ModelSpec, dtype: str, vocab: int) -> dict:
    cfg = write_common(spec, "SmolLM3ForCausalLM", "smollm3", dtype, vocab)
    n, w = spec.num_hidden_layers, spec.sliding_window
    rope = [spec.uses_rope(i) for i in range(n)]
    cfg.update({
        "attention_bias": False,
        "layer_types": ["sliding_attention" if (w and r) else "full_attention" for r in rope],
        "mlp_bias": False,
        "no_rope_layer_interval": spec.no_rope_layer or n + 1,
        "no_rope_layers": [int(r) for r in rope],
        "sliding_window": w,
        "use_sliding_window": w is not None,
    })
    return dict(sorted(cfg.items()))


def _interval(flags: list[int], where: Path) -> int | None:
    """no_rope_layers flags -> Nanotron's no_rope_layer (every k-th layer from 1 is NoPE)."""
    n = len(flags)
    nope = [i for i, f in enumerate(flags) if not f]
    if not nope:
        return None
    k = nope[0] + 1
    if n % k or nope != list(range(k - 1, n, k)):
        raise NanokernError(f"no_rope_layers {flags}: Nanotron's NoPE layers are every k-th layer with k dividing the layer count", where)
    return k


def spec_from_hf(cfg: dict, where: Path) -> ModelSpec:
    refuse_keys(cfg, where, {"attention_bias": "SmolLM3 puts a bias on o_proj, which Nanotron does not have",
                             "mlp_bias": "Nanotron has no MLP biases"})
    n = cfg.get("num_hidden_layers")
    flags = cfg.get("no_rope_layers")
    if flags is None and isinstance(n, int):
        k = cfg.get("no_rope_layer_interval", 4)
        flags = [int((i + 1) % k != 0) for i in range(n)]
    if not isinstance(flags, list) or len(flags) != n:
        raise NanokernError(f"no_rope_layers must list one flag per layer, not {flags!r}", where)
    k = _interval(flags, where)
    rope = [bool(f) for f in flags]  # SmolLM3Config's default layer_types window the NoPE layers
    return read_common(cfg, where, default_theta=2e6, no_rope_layer=k,  # SmolLM3Config's RoPE base
                       sliding_window=sliding_from_hf(cfg, where, rope, lambda i: not rope[i]))


FAMILY = Family("smollm3", "SmolLM3ForCausalLM", "smollm3", PARAMS, refuses, hf_config, spec_from_hf)
