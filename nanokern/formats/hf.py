"""HuggingFace LlamaForCausalLM folders: read them, and plan them as save_pretrained writes them."""

from __future__ import annotations

import json
import math
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from nanokern.errors import NanokernError
from nanokern.formats import tokenizer as tok
from nanokern.formats.safetensors_io import read_header
from nanokern.model import LM_HEAD, LlamaSpec, LogicalTensor, Model, hf_tensor_shapes, whole_block
from nanokern.plan import OutFile, OutTensor, Plan, Source, resolve

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
SIZE_UNITS = {"TB": 10**12, "GB": 10**9, "MB": 10**6, "KB": 10**3}


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal units, as huggingface_hub parses them)."""
    if isinstance(text, int):
        return text
    s = text.strip().upper()
    unit = s[-2:]
    if unit not in SIZE_UNITS:
        if s.isdigit():
            return int(s)
        raise ValueError(f"size {text!r}: use a number with TB, GB, MB or KB")
    return int(float(s[:-2]) * SIZE_UNITS[unit])


def transformers_version() -> str:
    try:
        return version("transformers")
    except PackageNotFoundError:
        return "unknown"


def is_hf(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").is_file()


# ---------------------------------------------------------------------------------------------
# config.json / generation_config.json


def rope_parameters(spec: LlamaSpec) -> dict:
    params = {"rope_theta": float(spec.rope_theta), "rope_type": "default"}
    if spec.rope_scaling:
        extra = dict(spec.rope_scaling)
        params["rope_type"] = extra.pop("rope_type", extra.pop("type", "default"))
        params.update(extra)
    return params


def hf_config(spec: LlamaSpec, dtype: torch.dtype, vocab_size: int) -> dict:
    """config.json as transformers' LlamaConfig.save_pretrained writes it (5.x keys)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": spec.bos_token_id,
        "dtype": DTYPE_NAMES[dtype],
        "eos_token_id": spec.eos_token_id,
        "head_dim": spec.head_dim,
        "hidden_act": spec.hidden_act,
        "hidden_size": spec.hidden_size,
        "initializer_range": spec.initializer_range,
        "intermediate_size": spec.intermediate_size,
        "max_position_embeddings": spec.max_position_embeddings,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": spec.num_attention_heads,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_key_value_heads": spec.num_key_value_heads,
        "pad_token_id": spec.pad_token_id,
        "pretraining_tp": 1,
        "rms_norm_eps": spec.rms_norm_eps,
        "rope_parameters": rope_parameters(spec),
        "tie_word_embeddings": spec.tie_word_embeddings,
        "transformers_version": transformers_version(),
        "use_cache": True,
        "vocab_size": vocab_size,
    }


def generation_config(spec: LlamaSpec) -> dict:
    g = {"_from_model_config": True, "bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id}
    if spec.pad_token_id is not None:
        g["pad_token_id"] = spec.pad_token_id
    g.update({"output_attentions": False, "output_hidden_states": False, "transformers_version": transformers_version(), "use_cache": True})
    return g


def dump_json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# reading


def _pos_int(x) -> bool:
    return type(x) is int and x > 0


def _number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_OPTIONAL = (  # key, check, what it must be (absent or null means the default)
    ("num_key_value_heads", _pos_int, "a positive integer"),
    ("head_dim", _pos_int, "a positive integer"),
    ("max_position_embeddings", _pos_int, "a positive integer"),
    ("rms_norm_eps", lambda x: _number(x) and x > 0, "a positive number"),
    ("rope_theta", lambda x: _number(x) and x > 0, "a positive number"),
    ("rope_scaling", lambda x: isinstance(x, dict), "an object or null"),
    ("rope_parameters", lambda x: isinstance(x, dict), "an object or null"),
    ("tie_word_embeddings", lambda x: isinstance(x, bool), "true or false"),
    ("hidden_act", lambda x: isinstance(x, str), "a string"),
)


def spec_from_hf_config(cfg: dict, where: Path) -> LlamaSpec:
    if not isinstance(cfg, dict):
        raise NanokernError("not a JSON object", where)
    archs = cfg.get("architectures") or ["LlamaForCausalLM"]
    arch = archs[0] if isinstance(archs, list) else archs
    if cfg.get("model_type") not in ("llama", None) or arch != "LlamaForCausalLM":
        raise NanokernError(f"unsupported architecture {cfg.get('architectures')} / {cfg.get('model_type')!r} (only LlamaForCausalLM)", where)
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise NanokernError("unsupported: attention_bias / mlp_bias (Nanotron's LLaMA has no biases)", where)
    missing = [k for k in _REQUIRED if k not in cfg]
    if missing:
        raise NanokernError(f"config.json lacks {', '.join(map(repr, missing))}", where)
    bad = [k for k in _REQUIRED if not _pos_int(cfg[k])]
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
        theta = 10000.0
    if not (_number(theta) and theta > 0):
        raise NanokernError(f"rope_theta must be a positive number, not {theta!r}", where)
    rtype = rp.pop("rope_type", "default")
    scaling = cfg.get("rope_scaling") or (None if rtype == "default" else {"rope_type": rtype, **rp})
    try:
        spec = LlamaSpec(
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
        )
    except KeyError as e:
        raise NanokernError(f"config.json lacks {e.args[0]!r}", where) from None
    if spec.head_dim * spec.num_attention_heads != spec.hidden_size:
        raise NanokernError("head_dim * num_attention_heads != hidden_size: Nanotron cannot represent this model", where)
    if spec.num_attention_heads % spec.num_key_value_heads:
        raise NanokernError(
            f"num_attention_heads {spec.num_attention_heads} is not a multiple of num_key_value_heads {spec.num_key_value_heads}", where
        )
    if spec.head_dim % 2:
        raise NanokernError(f"head dimension {spec.head_dim} must be even for RoPE", where)
    return spec


def _read_json(f: Path, what: str):
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NanokernError(f"missing {what}", f) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NanokernError(f"not valid JSON ({e})", f) from None
    except OSError as e:
        raise NanokernError(f"cannot read: {e.strerror or e}", f) from None


def read_hf(path: str | os.PathLike) -> Model:
    d = Path(path)
    cfg_file = d / "config.json"
    cfg = _read_json(cfg_file, "config.json")
    spec = spec_from_hf_config(cfg, cfg_file)
    index = d / "model.safetensors.index.json"
    if index.is_file():
        idx = _read_json(index, "index")
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise NanokernError("not a valid safetensors index (weight_map must map tensor names to file names)", index)
        files = sorted(set(wm.values()))
        for f in files:
            if os.path.basename(f) != f or f in ("", ".", "..") or os.path.isabs(f) or "\\" in f:
                raise NanokernError(f"index names a file outside its folder: {f!r}", index)
    elif (d / "model.safetensors").is_file():
        files, wm = ["model.safetensors"], None
    else:
        raise NanokernError("no model.safetensors or model.safetensors.index.json", d)
    refs = {}
    for f in files:
        h = read_header(d / f)
        for name, ref in h.tensors.items():
            if wm is not None and wm.get(name) != f:
                continue
            refs[name] = ref
    want = hf_tensor_shapes(spec)
    tensors: dict[str, LogicalTensor] = {}
    warnings = []
    wrong = [(n, refs[n], s) for n, s in want.items() if n in refs and refs[n].shape != s]
    if len(wrong) > 1:  # many tensors disagree: the config is what is wrong
        name, ref, shape = wrong[0]
        raise NanokernError(
            f"does not match the stored tensors: {name} has shape {list(ref.shape)}, the config implies {list(shape)} "
            f"({len(wrong) - 1} more tensor(s) disagree)",
            cfg_file,
        )
    for name, shape in want.items():
        ref = refs.get(name)
        if ref is None:
            if wm is not None and name in wm:
                raise NanokernError(f"missing tensor {name} (the index places it in this file)", d / wm[name])
            where = index if wm is not None else d / "model.safetensors"
            raise NanokernError(f"missing tensor {name}", where)
        if ref.shape != shape:
            raise NanokernError(f"{name} has shape {list(ref.shape)} but config.json implies {list(shape)}", ref.path)
        if ref.dtype not in DTYPE_NAMES:
            raise NanokernError(f"{name}: unsupported dtype {str(ref.dtype).replace('torch.', '')} (supported: fp32, bf16, fp16)", ref.path)
        tensors[name] = LogicalTensor(name, shape, ref.dtype, [whole_block(ref)])
    if spec.tie_word_embeddings and LM_HEAD in refs:
        warnings.append("tie_word_embeddings is true: the stored lm_head.weight is ignored")
    layout = {"format": "hf", "files": len(files), "sharded": wm is not None}
    return Model(spec, tensors, "hf", str(d), warnings, layout)


# ---------------------------------------------------------------------------------------------
# planning HF output


def resolve_dtype(name: str, source: torch.dtype) -> torch.dtype:
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "keep": source,
             "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}  # torch's names too
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"dtype {name!r}: choose bf16, fp16, fp32 or keep") from None


def plan_hf(
    model: Model,
    dtype: str = "bf16",
    vocab_size: int | None = None,
    max_shard_size: str | int = "5GB",
    tokenizer: str | None = None,
) -> Plan:
    spec = model.spec
    out_dtype = resolve_dtype(dtype, model.dtype)
    V = spec.vocab_size if vocab_size is None else vocab_size
    if not 0 < V <= spec.vocab_size:
        raise NanokernError(f"--vocab-size {V} must be in 1..{spec.vocab_size} (the rows stored)", model.path)
    warnings = list(model.warnings)
    aux: dict[str, bytes] = {}
    out_spec = LlamaSpec(**{**spec.__dict__})
    if tokenizer is not None:
        files = tok.tokenizer_files(tokenizer)
        ids, tok_vocab = tok.special_token_ids(files)
        if tok_vocab is not None and tok_vocab > V:
            raise NanokernError(f"tokenizer has {tok_vocab} tokens but the exported vocab has {V} rows", tokenizer)
        for k, v in ids.items():
            have = getattr(out_spec, f"{k}_token_id")
            if v is not None and have != v:
                warnings.append(f"{k}_token_id {have} in the model config disagrees with the tokenizer ({v}): using {v}")
                setattr(out_spec, f"{k}_token_id", v)
        aux.update(files)
    aux["config.json"] = dump_json(hf_config(out_spec, out_dtype, V))
    aux["generation_config.json"] = dump_json(generation_config(out_spec))

    tensors = []
    for name, shape in hf_tensor_shapes(spec, V).items():
        t = model.tensors[name]
        rows = np.arange(shape[0] if len(shape) == 2 else 1, dtype=np.int64)
        tensors.append(OutTensor(name, shape, out_dtype, [Source(name, rows, 0, t.shape2d[1])]))

    limit = parse_size(max_shard_size)
    shards: list[list[OutTensor]] = []
    cur: list[OutTensor] = []
    cur_size = 0
    for t in tensors:  # huggingface_hub's greedy split, in state_dict order
        if t.nbytes > limit:
            shards.append([t])
            continue
        if cur and cur_size + t.nbytes > limit:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.append(t)
        cur_size += t.nbytes
    if cur:
        shards.append(cur)
    n = len(shards)
    files = []
    for k, group in enumerate(shards):
        name = "model.safetensors" if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
        files.append(OutFile(name, sorted(group, key=lambda t: t.name), {"format": "pt"}))
    if n > 1:
        total_params = sum(int(np.prod(t.shape)) for t in tensors)
        index = {
            "metadata": {"total_parameters": total_params, "total_size": sum(t.nbytes for t in tensors)},
            "weight_map": {t.name: f.path for f in files for t in f.tensors},
        }
        aux["model.safetensors.index.json"] = dump_json(index)
    summary = {"dtype": DTYPE_NAMES[out_dtype], "vocab_size": V, "shards": n, "tied": spec.tie_word_embeddings}
    return resolve(Plan(model, "hf", files, aux, warnings, summary))
