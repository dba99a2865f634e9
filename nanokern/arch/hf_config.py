"""config.json keys every family shares (transformers 5.x spelling), both ways."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Callable

from nanokern.arch.spec import ModelSpec
from nanokern.arch.values import number, pos_int
from nanokern.errors import NanokernError


@functools.cache
def transformers_version() -> str:
    """The installed transformers' version, as HF writes it into config.json. The name of its
    `transformers-<version>.dist-info` folder says it: importing importlib.metadata to read it
    would cost about 35 ms of every export's start-up (the fallback, for other installs)."""
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith("transformers-") and name.endswith(".dist-info"):
                return name[len("transformers-"):-len(".dist-info")]
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("transformers")
    except PackageNotFoundError:
        return "unknown"


def rope_parameters(spec: ModelSpec) -> dict:
    params = {"rope_theta": float(spec.rope_theta), "rope_type": "default"}
    if spec.rope_scaling:
        extra = dict(spec.rope_scaling)
        params["rope_type"] = extra.pop("rope_type", extra.pop("type", "default"))
        params.update(extra)
    return params


def legacy_keys(spec: ModelSpec, dtype: str) -> dict:
    """The same settings as transformers 4.x spells them. 4.x reads the top-level `rope_theta`,
    `rope_scaling` and `torch_dtype` and ignores `rope_parameters` (a missing rope_theta silently
    becomes the class default: wrong logits); 5.x reads `rope_parameters` and `dtype`, drops these
    three without a warning, and takes a non-null `rope_scaling` as its `rope_parameters` with the
    top-level `rope_theta` filled in: written from the same dict, both read the same RoPE."""
    params = rope_parameters(spec)
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    return {"rope_theta": params["rope_theta"], "rope_scaling": None if params["rope_type"] == "default" else scaling,
            "torch_dtype": dtype}


def write_common(spec: ModelSpec, hf_class: str, model_type: str, dtype: str, vocab: int) -> dict:
    """The keys of a LLaMA-like config.json, in both transformers 5.x's spelling and 4.x's
    (legacy_keys); a family adds and overrides its own."""
    return {
        **legacy_keys(spec, dtype),
        "architectures": [hf_class],
        "attention_dropout": 0.0,
        "bos_token_id": spec.bos_token_id,
        "dtype": dtype,
        "eos_token_id": spec.eos_token_id,
        "hidden_act": spec.hidden_act,
        "hidden_size": spec.hidden_size,
        "initializer_range": spec.initializer_range,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": model_type,
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pad_token_id": spec.pad_token_id,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_parameters": rope_parameters(spec),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "transformers_version": transformers_version(),
        "use_cache": True,
        "vocab_size": vocab,
    }


_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_OPTIONAL = (  # key, check, what it must be (absent or null means the default)
    ("num_key_value_heads", pos_int, "a positive integer"),
    ("head_dim", pos_int, "a positive integer"),
    ("max_position_embeddings", pos_int, "a positive integer"),
    ("rms_norm_eps", lambda x: number(x) and x > 0, "a positive number"),
    ("rope_theta", lambda x: number(x) and x > 0, "a positive number"),
    ("rope_scaling", lambda x: isinstance(x, dict), "an object or null"),
    ("rope_parameters", lambda x: isinstance(x, dict), "an object or null"),
    ("tie_word_embeddings", lambda x: isinstance(x, bool), "true or false"),
    ("hidden_act", lambda x: isinstance(x, str), "a string"),
)


def refuse_keys(cfg: dict, where: Path, keys: dict[str, str]) -> None:
    """keys: {config key: why Nanotron cannot hold it}; refuse the first one that is set."""
    for key, why in keys.items():
        if cfg.get(key):
            raise NanokernError(f"unsupported {key}={cfg[key]!r}: {why}", where)


def read_common(cfg: dict, where: Path, default_theta: float = 10000.0, **features) -> ModelSpec:
    """The shared keys of a LLaMA-like config.json -> ModelSpec (features: the family's own;
    default_theta: the class's RoPE base, which both transformers 4.x and 5.x take when the file
    names none)."""
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise NanokernError(f"config.json lacks {', '.join(map(repr, missing))}", where)
    bad = [k for k in _REQUIRED if not pos_int(cfg[k])]
    if bad:
        raise NanokernError(f"{bad[0]} must be a positive integer, not {cfg[bad[0]]!r}", where)
    for key, ok, what in _OPTIONAL:
        if cfg.get(key) is not None and not ok(cfg[key]):
            raise NanokernError(f"{key} must be {what}, not {cfg[key]!r}", where)
    if cfg.get("hidden_act") not in (None, "silu"):
        raise NanokernError(f"unsupported hidden_act {cfg['hidden_act']!r} (only silu)", where)
    rp = dict(cfg.get("rope_parameters") or {})
    theta = rp.pop("rope_theta", None)
    if theta is None:
        theta = cfg.get("rope_theta")
    if theta is None:
        theta = default_theta
    if not (number(theta) and theta > 0):
        raise NanokernError(f"rope_theta must be a positive number, not {theta!r}", where)
    rtype = rp.pop("rope_type", "default")
    scaling = cfg.get("rope_scaling") or (None if rtype == "default" else {"rope_type": rtype, **rp})
    spec = ModelSpec(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=cfg.get("num_key_value_heads") or cfg["num_attention_heads"],
        vocab_size=cfg["vocab_size"],
        rms_norm_eps=cfg.get("rms_norm_eps") or 1e-6,
        rope_theta=float(theta),
        rope_scaling=scaling,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings") or 2048,
        bos_token_id=cfg.get("bos_token_id"),
        eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        hidden_act=cfg.get("hidden_act") or "silu",
        initializer_range=cfg.get("initializer_range", 0.02),
        head_dim=cfg.get("head_dim"),
        **features,
    )
    if spec.head_dim * spec.num_attention_heads != spec.hidden_size:
        raise NanokernError(
            f"head_dim {spec.head_dim} x num_attention_heads {spec.num_attention_heads} != hidden_size {spec.hidden_size}: "
            "Nanotron cannot represent this model (its head dim is hidden_size / num_attention_heads)", where)
    if spec.num_attention_heads % spec.num_key_value_heads:
        raise NanokernError(
            f"num_attention_heads {spec.num_attention_heads} is not a multiple of num_key_value_heads {spec.num_key_value_heads}", where
        )
    if spec.head_dim % 2:
        raise NanokernError(f"head dimension {spec.head_dim} must be even for RoPE", where)
    return spec


def sliding_from_hf(cfg: dict, where: Path, rope_layers: list[bool] | None = None,
                    default_slides: Callable[[int], bool] | None = None) -> int | None:
    """Window keys -> the window of the layers that slide (None: none slides). Nanotron slides
    every RoPE layer (rope_layers: which layers apply RoPE; default all). Without layer_types,
    layer i slides as the class's own default says (default_slides(i); Qwen2's: i >=
    max_window_layers)."""
    n = cfg["num_hidden_layers"]
    if not cfg.get("use_sliding_window") or cfg.get("sliding_window") is None:
        return None
    w = cfg["sliding_window"]
    if not pos_int(w):
        raise NanokernError(f"sliding_window must be a positive integer, not {w!r}", where)
    types = cfg.get("layer_types")
    if types is None:
        mwl = cfg.get("max_window_layers") or 0
        slides_at = default_slides or (lambda i: i >= mwl)
        types = ["sliding_attention" if slides_at(i) else "full_attention" for i in range(n)]
    slides = [t == "sliding_attention" for t in types]
    want = rope_layers if rope_layers is not None else [True] * n
    if not any(slides):
        return None
    if slides != want:
        raise NanokernError(f"layer_types {types}: Nanotron slides the window on exactly the RoPE layers", where)
    return w
