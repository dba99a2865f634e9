"""Nanotron's model config classes (LlamaConfig, Qwen2Config at HEAD 2411b022) <-> ModelSpec.

model_config.json is `json.dumps(dataclasses.asdict(config))`: one line, keys in dataclass field
order. The field lists below are those orders, with the defaults a source that lacks a field gets.
"""

from __future__ import annotations

from pathlib import Path

from nanokern.arch.spec import ModelSpec, MoeSpec
from nanokern.arch.values import number, pos_int
from nanokern.errors import NanokernError

_COMMON_HEAD = {
    "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": None, "initializer_range": 0.02,
    "intermediate_size": None,
}
LLAMA_FIELDS = {
    **_COMMON_HEAD, "is_llama_config": True, "max_position_embeddings": 2048, "num_attention_heads": None,
    "num_hidden_layers": None, "attention_bias": False, "num_key_value_heads": None, "pad_token_id": None,
    "pretraining_tp": 1, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 10000.0, "rope_interleaved": False,
    "tie_word_embeddings": False, "use_cache": True, "vocab_size": None, "_attn_implementation": "flash_attention_2",
    "z_loss_enabled": False, "z_loss_coefficient": 0.0001,
}
QWEN2_FIELDS = {
    **_COMMON_HEAD, "is_qwen2_config": True, "max_position_embeddings": 4096, "num_attention_heads": None,
    "num_hidden_layers": None, "num_key_value_heads": None, "pad_token_id": None, "pretraining_tp": 1,
    "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 10000.0, "rope_interleaved": False,
    "rope_seq_len_interpolation_factor": None, "tie_word_embeddings": False, "use_cache": True, "vocab_size": None,
    "_attn_implementation": "flash_attention_2", "flex_attention_mask": None, "attention_bias": False,
    "sliding_window_size": None, "z_loss_enabled": False, "z_loss_coefficient": 0.0001, "no_rope_layer": None,
    "_fused_rotary_emb": True, "_fused_rms_norm": True, "_use_qkv_packed": True, "_use_doc_masking": False,
    "log_attn_probs": True, "ring_attn_heads_k_stride": None, "moe_config": None,
}
MOE_FIELDS = ("num_experts", "top_k", "moe_intermediate_size", "shared_expert_intermediate_size",
              "router_aux_loss_coef", "layers", "enable_shared_expert", "token_dispatcher_type")
CLASSES = {"llama": LLAMA_FIELDS, "qwen2": QWEN2_FIELDS}


def config_class(cfg: dict, where: Path) -> str:
    """'qwen2' or 'llama' from the marker key (a dict with neither is a LlamaConfig)."""
    if cfg.get("is_starcoder2_config"):
        raise NanokernError("unsupported architecture: Starcoder2Config (is_starcoder2_config)", where)
    return "qwen2" if cfg.get("is_qwen2_config") else "llama"


_REQUIRED = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
_OPTIONAL = (  # key, check, what it must be (None always means "the default")
    ("rope_interleaved", lambda x: isinstance(x, bool), "true or false"),
    ("tie_word_embeddings", lambda x: isinstance(x, bool), "true or false"),
    ("attention_bias", lambda x: isinstance(x, bool), "true or false"),
    ("rope_theta", lambda x: number(x) and x > 0, "a positive number"),
    ("rms_norm_eps", lambda x: number(x) and x > 0, "a positive number"),
    ("rope_scaling", lambda x: isinstance(x, dict), "an object or null"),
    ("hidden_act", lambda x: isinstance(x, str), "a string"),
    ("max_position_embeddings", pos_int, "a positive integer"),
    ("sliding_window_size", pos_int, "a positive integer or null"),
    ("no_rope_layer", pos_int, "a positive integer or null"),
    ("moe_config", lambda x: isinstance(x, dict), "an object or null"),
)


def _or(value, default):
    return default if value is None else value


def check(cfg: dict, where: Path) -> str:
    """Validate model_config.json; return its class. Raises NanokernError naming the key."""
    cls = config_class(cfg, where)
    missing = [k for k in _REQUIRED if not pos_int(cfg.get(k))]
    if cfg.get("num_key_value_heads") is not None and not pos_int(cfg["num_key_value_heads"]):
        missing.append("num_key_value_heads")
    if missing:
        raise NanokernError(f"missing or not a positive integer: {', '.join(missing)}", where)
    for key, ok, what in _OPTIONAL:
        if cfg.get(key) is not None and not ok(cfg[key]):
            raise NanokernError(f"{key} must be {what}, not {cfg[key]!r}", where)
    if cls == "llama" and cfg.get("attention_bias"):
        raise NanokernError("unsupported: attention_bias=true in a LlamaConfig (Nanotron's LLaMA ignores it and has no biases)", where)
    if _or(cfg.get("hidden_act"), "silu") != "silu":
        raise NanokernError(f"unsupported hidden_act {cfg['hidden_act']!r} (only silu)", where)
    if cfg.get("rope_seq_len_interpolation_factor") is not None:
        raise NanokernError(f"unsupported rope_seq_len_interpolation_factor={cfg['rope_seq_len_interpolation_factor']!r}: "
                            "no transformers class scales RoPE positions this way", where)
    n = cfg["num_hidden_layers"]
    if cfg.get("no_rope_layer") and n % cfg["no_rope_layer"]:
        raise NanokernError(f"no_rope_layer {cfg['no_rope_layer']} does not divide num_hidden_layers {n}", where)
    return cls


def _moe(m: dict | None, n: int, where: Path) -> MoeSpec | None:
    if m is None:
        return None
    for k in ("num_experts", "top_k", "moe_intermediate_size"):
        if not pos_int(m.get(k)):
            raise NanokernError(f"moe_config.{k} must be a positive integer, not {m.get(k)!r}", where)
    if m["top_k"] > m["num_experts"]:
        raise NanokernError(f"moe_config.top_k {m['top_k']} exceeds num_experts {m['num_experts']}", where)
    layers = m.get("layers", [-1])
    if layers == [-1]:
        layers = list(range(n))
    if not isinstance(layers, list) or not all(type(i) is int and 0 <= i < n for i in layers):
        raise NanokernError(f"moe_config.layers must list layers in 0..{n - 1} (or [-1]), not {layers!r}", where)
    shared = bool(m.get("enable_shared_expert", False))
    width = m.get("shared_expert_intermediate_size")
    if shared and not pos_int(width):
        raise NanokernError(f"moe_config.shared_expert_intermediate_size must be a positive integer, not {width!r}", where)
    return MoeSpec(m["num_experts"], m["top_k"], m["moe_intermediate_size"], width if pos_int(width) else m["moe_intermediate_size"],
                   sorted(layers), shared, m.get("router_aux_loss_coef", 0.01), m.get("token_dispatcher_type", "alltoall"))


def spec_from_config(cfg: dict, where: Path) -> ModelSpec:
    """A checked model_config.json (see `check`) -> ModelSpec."""
    n = cfg["num_hidden_layers"]
    qwen2 = bool(cfg.get("is_qwen2_config"))
    return ModelSpec(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=n,
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        vocab_size=cfg["vocab_size"],
        rms_norm_eps=_or(cfg.get("rms_norm_eps"), 1e-6),
        rope_theta=float(_or(cfg.get("rope_theta"), 10000.0)),
        rope_scaling=cfg.get("rope_scaling"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=_or(cfg.get("max_position_embeddings"), 2048),
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id"),
        hidden_act=_or(cfg.get("hidden_act"), "silu"),
        initializer_range=cfg.get("initializer_range", 0.02),
        attention_bias=bool(qwen2 and cfg.get("attention_bias")),
        no_rope_layer=cfg.get("no_rope_layer") if qwen2 else None,
        sliding_window=cfg.get("sliding_window_size") if qwen2 else None,
        moe=_moe(cfg.get("moe_config"), n, where) if qwen2 else None,
    )


def warnings_for(cfg: dict) -> list[str]:
    """Keys whose semantics an export does not carry, in one line each."""
    out = []
    if cfg.get("_use_doc_masking"):
        out.append("_use_doc_masking is true: Nanotron masks across documents in packed training batches; "
                   "the exported model attends over the whole sequence (the same for a single document)")
    if cfg.get("flex_attention_mask"):
        out.append(f"flex_attention_mask {cfg['flex_attention_mask']!r} is a training-time mask: not carried over")
    return out


def _llama_lacks(spec: ModelSpec) -> list[str]:
    """The Qwen2Config fields this model uses that LlamaConfig has no place for."""
    keys = {"attention_bias": spec.attention_bias, "no_rope_layer": spec.no_rope_layer is not None,
            "sliding_window_size": spec.sliding_window is not None, "moe_config": spec.moe is not None}
    return [key for key, set_ in keys.items() if set_]


def _refuse_llama(spec: ModelSpec, where) -> None:
    lacks = _llama_lacks(spec)
    if lacks:
        raise NanokernError(f"--nanotron-config llama: LlamaConfig has no {lacks[0]}; use --nanotron-config qwen2", where)


def model_config(spec: ModelSpec, cls: str, vocab: int, interleaved: bool, base: dict, warnings: list[str], where) -> dict:
    """model_config.json for class `cls` ('llama' or 'qwen2'): values from the spec, the other
    fields from the source's own model_config (base) when it had them, else the defaults."""
    if cls == "llama":
        _refuse_llama(spec, where)
    eos = spec.eos_token_id
    if isinstance(eos, list):
        warnings.append(f"eos_token_id {eos} is a list; Nanotron's field is an int: writing {eos[0]}")
        eos = eos[0]
    values = {
        "bos_token_id": spec.bos_token_id, "eos_token_id": eos, "hidden_act": spec.hidden_act,
        "hidden_size": spec.hidden_size, "initializer_range": spec.initializer_range,
        "intermediate_size": spec.intermediate_size, "max_position_embeddings": spec.max_position_embeddings,
        "num_attention_heads": spec.num_attention_heads, "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads, "pad_token_id": spec.pad_token_id,
        "rms_norm_eps": spec.rms_norm_eps, "rope_scaling": spec.rope_scaling, "rope_theta": float(spec.rope_theta),
        "rope_interleaved": interleaved, "tie_word_embeddings": spec.tie_word_embeddings, "vocab_size": vocab,
    }
    if cls == "qwen2":
        values.update({"attention_bias": spec.attention_bias, "sliding_window_size": spec.sliding_window,
                       "no_rope_layer": spec.no_rope_layer,
                       "moe_config": _moe_dict(spec.moe, base.get("moe_config"), spec.num_hidden_layers)})
    fields = CLASSES[cls]
    return {k: values[k] if k in values else base.get(k, default) for k, default in fields.items()}


def _moe_dict(m: MoeSpec | None, base: dict | None, n: int) -> dict | None:
    if m is None:
        return None
    out = {"num_experts": m.num_experts, "top_k": m.top_k, "moe_intermediate_size": m.moe_intermediate_size,
           "shared_expert_intermediate_size": m.shared_expert_intermediate_size,
           "router_aux_loss_coef": m.router_aux_loss_coef, "layers": list(m.layers),
           "enable_shared_expert": m.enable_shared_expert, "token_dispatcher_type": m.token_dispatcher_type}
    if isinstance(base, dict) and base.get("layers") == [-1] and out["layers"] == list(range(n)):
        out["layers"] = [-1]
    if isinstance(base, dict) and isinstance(base.get("token_dispatcher_type"), str):  # config.json has no place for it
        out["token_dispatcher_type"] = base["token_dispatcher_type"]
    return {k: out[k] for k in MOE_FIELDS}


# ---------------------------------------------------------------------------------------------
# provenance: what a HF export records of its Nanotron source, so that importing it back restores it

PROVENANCE = "nanotron_source"  # its key in the export's manifest
FROM_SPEC = frozenset({  # the fields model_config() takes from the spec (config.json carries them)
    "bos_token_id", "eos_token_id", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
    "max_position_embeddings", "num_attention_heads", "num_hidden_layers", "num_key_value_heads", "pad_token_id",
    "rms_norm_eps", "rope_scaling", "rope_theta", "rope_interleaved", "tie_word_embeddings", "vocab_size",
    "attention_bias", "sliding_window_size", "no_rope_layer"})


def provenance(cls: str, source: dict, interleaved: bool) -> dict:
    """The Nanotron source of an export: its config class, its RoPE row order (as read, after any
    --rope-interleaved), and the model_config.json fields config.json has no place for (z_loss_*,
    _fused_*, _use_doc_masking, log_attn_probs, _attn_implementation, ...; moe_config whole, for
    its token_dispatcher_type and a `layers: [-1]`)."""
    return {"config_class": cls, "rope_interleaved": bool(interleaved),
            "model_config": {k: v for k, v in source.items() if k not in FROM_SPEC}}


def restore(prov) -> tuple[str, dict, bool] | None:
    """A recorded provenance -> (config class, base fields, rope_interleaved); None when it is not
    one this version wrote (then the import behaves as for any HF folder)."""
    if not isinstance(prov, dict):
        return None
    cls, base, inter = prov.get("config_class"), prov.get("model_config"), prov.get("rope_interleaved")
    if cls not in CLASSES or not isinstance(base, dict) or not isinstance(inter, bool):
        return None
    return cls, {k: v for k, v in base.items() if k not in FROM_SPEC}, inter


def holds(spec: ModelSpec, cls: str) -> bool:
    """Whether config class `cls` can hold the model (LlamaConfig: no bias, NoPE, window or MoE)."""
    return cls != "llama" or not _llama_lacks(spec)
