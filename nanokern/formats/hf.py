"""HuggingFace folders of every family in the architecture table: read them, and plan them as
save_pretrained writes them."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from pathlib import Path

import numpy as np

from nanokern import arch
from nanokern.arch import nanotron_config
from nanokern.arch.family import Family
from nanokern.arch.hf_config import transformers_version
from nanokern.arch.spec import ModelSpec
from nanokern.arch.values import pos_int
from nanokern.errors import NanokernError
from nanokern.formats import tokenizer as tok
from nanokern.io import dtypes
from nanokern.io.regular import read_text
from nanokern.io.units import parse_size
from nanokern.io.safetensors import close_maps, map_array, read_header
from nanokern.plan.model import Block, HfLayout, LogicalTensor, Model, expert_view, shape2d, whole_block
from nanokern.plan import OutFile, OutTensor, Plan, Source, fp8, resolve

EXPORT_MANIFEST = "nanokern-manifest.json"  # what execute/manifest.py writes (MANIFEST), read here a layer above


def is_hf(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").exists()


# ---------------------------------------------------------------------------------------------
# config.json / generation_config.json


def generation_config(spec: ModelSpec) -> dict:
    g = {"_from_model_config": True, "bos_token_id": spec.bos_token_id, "eos_token_id": spec.eos_token_id}
    if spec.pad_token_id is not None:
        g["pad_token_id"] = spec.pad_token_id
    g.update({"output_attentions": False, "output_hidden_states": False, "transformers_version": transformers_version(), "use_cache": True})
    return g


def dump_json(obj: dict) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# ---------------------------------------------------------------------------------------------
# reading


def family_of(cfg, where: Path) -> Family:
    """The family of a config.json, by its architectures (else model_type)."""
    if not isinstance(cfg, dict):
        raise NanokernError("not a JSON object", where)
    archs = cfg.get("architectures") or []
    name = archs[0] if isinstance(archs, list) and archs else archs if isinstance(archs, str) else None
    by_type = {f.model_type: f for f in arch.FAMILIES}
    f = arch.BY_CLASS.get(name) if name else by_type.get(cfg.get("model_type", "llama"))
    if f is None or cfg.get("model_type", f.model_type) != f.model_type:
        known = ", ".join(arch.BY_CLASS)
        raise NanokernError(f"unsupported architectures {cfg.get('architectures')} / model_type {cfg.get('model_type')!r} "
                            f"(supported: {known})", where)
    return f


def spec_from_hf_config(cfg: dict, where: Path) -> tuple[Family, ModelSpec]:
    f = family_of(cfg, where)
    return f, f.spec_from_hf(cfg, where)


def _read_json(f: Path, what: str):
    if not f.exists() and not f.is_symlink():
        raise NanokernError(f"missing {what}", f)
    try:
        return json.loads(read_text(f))  # (a FIFO or a device is refused from its stat, never opened)
    except json.JSONDecodeError as e:
        raise NanokernError(f"not valid JSON ({e})", f) from None


def _all_zero_bits(refs) -> bool:
    """Every element of every tensor is +0.0 (bit pattern 0; -0.0 would not survive the round
    trip). Each file is mapped once, and unmapped after."""
    maps: dict = {}
    try:
        return not any(bool(map_array(ref, maps).view(f"<u{ref.dtype.itemsize}").any()) for ref in refs)
    finally:
        close_maps(maps.values())


def _fused_experts(refs: dict, spec: ModelSpec) -> dict[str, LogicalTensor]:
    """Per-expert logical tensors from experts stored fused, as transformers holds them in memory
    (`mlp.experts.gate_up_proj` [E, 2I, H] with gate rows first, `mlp.experts.down_proj` [E, H, I])
    rather than as save_pretrained writes them (one tensor per expert and projection)."""
    out: dict[str, LogicalTensor] = {}
    if spec.moe is None:
        return out
    E, I, H = spec.moe.num_experts, spec.moe.moe_intermediate_size, spec.hidden_size
    for i in spec.moe.layers:
        p = f"model.layers.{i}.mlp.experts."
        gu, dn = refs.get(p + "gate_up_proj"), refs.get(p + "down_proj")
        if gu is None or dn is None:
            continue
        for ref, want in ((gu, (E, 2 * I, H)), (dn, (E, H, I))):
            if ref.shape != want:
                raise NanokernError(f"fused experts of layer {i} have shape {list(ref.shape)}, config.json implies {list(want)}",
                                    ref.path)
        rows = np.arange(I, dtype=np.int64)
        for e in range(E):
            g = expert_view(gu, e)
            out[f"{p}{e}.gate_proj.weight"] = LogicalTensor(f"{p}{e}.gate_proj.weight", (I, H), gu.dtype, [Block(g, rows, 0, rows, 0, H)])
            out[f"{p}{e}.up_proj.weight"] = LogicalTensor(f"{p}{e}.up_proj.weight", (I, H), gu.dtype, [Block(g, rows + I, 0, rows, 0, H)])
            out[f"{p}{e}.down_proj.weight"] = LogicalTensor(f"{p}{e}.down_proj.weight", (H, I), dn.dtype, [whole_block(expert_view(dn, e))])
    return out


def is_quantized(cfg: dict) -> bool:
    """A config.json of a quantized model (an FP8 export: `quantization_config`)."""
    return isinstance(cfg.get("quantization_config"), dict)


def read_config(path: str | os.PathLike) -> dict:
    """A HF folder's config.json, parsed (one error line naming it otherwise)."""
    return _read_json(Path(path) / "config.json", "config.json")


def read_hf(path: str | os.PathLike) -> Model:
    d = Path(path)
    cfg_file = d / "config.json"
    cfg = _read_json(cfg_file, "config.json")
    family_of(cfg, cfg_file)
    if is_quantized(cfg):
        raise NanokernError(f"a quantized model (quantization_config: {cfg['quantization_config'].get('quant_method')}): "
                            f"nanokern does not read quantized folders yet (`nanokern verify` checks an FP8 export's "
                            f"checksums)", cfg_file)
    index = d / "model.safetensors.index.json"
    if index.exists():
        idx = _read_json(index, "index")
        wm = idx.get("weight_map") if isinstance(idx, dict) else None
        if not isinstance(wm, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in wm.items()):
            raise NanokernError("not a valid safetensors index (weight_map must map tensor names to file names)", index)
        files = sorted(set(wm.values()))
        for f in files:
            if os.path.basename(f) != f or f in ("", ".", "..") or os.path.isabs(f) or "\\" in f:
                raise NanokernError(f"index names a file outside its folder: {f!r}", index)
    elif (d / "model.safetensors").exists():
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
    _check_layer_count(cfg, refs, cfg_file)  # before anything is built per layer
    family, spec = spec_from_hf_config(cfg, cfg_file)
    want = {t[0]: t[1] for t in family.hf_tensors(spec)}
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
    fused = _fused_experts(refs, spec)
    for name, shape in want.items():
        ref = refs.get(name)
        if ref is None and name in fused:
            tensors[name] = fused[name]
            continue
        if ref is None:
            if wm is not None and name in wm:
                raise NanokernError(f"missing tensor {name} (the index places it in this file)", d / wm[name])
            where = index if wm is not None else d / "model.safetensors"
            raise NanokernError(f"missing tensor {name}", where)
        if ref.shape != shape:
            raise NanokernError(f"{name} has shape {list(ref.shape)} but config.json implies {list(shape)}", ref.path)
        if ref.dtype not in dtypes.FLOATS:
            raise NanokernError(f"{name}: unsupported dtype {ref.dtype} (supported: fp32, bf16, fp16)", ref.path)
        tensors[name] = LogicalTensor(name, shape, ref.dtype, [whole_block(ref)])
    for z in family.zero_means_absent:
        names = z.names(spec)
        if names and _all_zero_bits(tensors[n].blocks[0].ref for n in names):
            spec = z.off(spec)
            for n in names:
                del tensors[n]
            warnings.append(f"every {z.what} tensor is zero: imported without them")
    if spec.tie_word_embeddings and "lm_head.weight" in refs:
        warnings.append("tie_word_embeddings is true: the stored lm_head.weight is ignored")
    layout = HfLayout(len(files), wm is not None, recorded_source(d, warnings))
    return Model(spec, family, tensors, "hf", str(d), warnings, layout)


def _check_layer_count(cfg: dict, refs: dict, cfg_file: Path) -> None:
    """num_hidden_layers (and an MoE's num_experts) against the tensors the headers hold: a config
    that claims more (1000000000, say) is refused before a list is built per layer or expert."""
    for key, pattern in (("num_hidden_layers", _LAYER), ("num_experts", _EXPERT)):
        n = cfg.get(key)
        if not pos_int(n):
            continue  # (absent, or not a number: the config reader names the key)
        stored = {int(m.group(1)) for m in map(pattern.match, refs) if m}
        if key == "num_experts":
            stored |= {e for ref in (refs[k] for k in refs if k.endswith(".mlp.experts.gate_up_proj")) for e in range(ref.shape[0])}
            if not stored:
                continue  # (a dense model: the config reader says whether it may have experts)
        first_missing = next(i for i in itertools.count() if i not in stored)
        if first_missing < n:
            raise NanokernError(f"{key} is {n} but the safetensors files hold {len(stored)} "
                                f"({'model.layers' if key == 'num_hidden_layers' else 'experts'} {first_missing} is missing)",
                                cfg_file)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_EXPERT = re.compile(r"^model\.layers\.\d+\.mlp\.experts\.(\d+)\.")


def recorded_source(d: Path, warnings: list[str]) -> tuple[str, dict, bool] | None:
    """The Nanotron source a nanokern export recorded in its manifest (config class, the fields
    config.json has no place for, rope_interleaved), which an import restores by default; None for
    a HF folder from elsewhere."""
    m = d / EXPORT_MANIFEST
    if not m.exists():
        return None
    try:
        data = json.loads(read_text(m))
    except (NanokernError, ValueError):
        data = None
    if not isinstance(data, dict) or nanotron_config.PROVENANCE not in data:
        return None
    got = nanotron_config.restore(data[nanotron_config.PROVENANCE])
    if got is None:
        warnings.append(f"{m}: {nanotron_config.PROVENANCE} is not readable: imported as any HF folder")
    return got


# ---------------------------------------------------------------------------------------------
# planning HF output


def plan_hf(
    model: Model,
    dtype: str = "bf16",
    vocab_size: int | None = None,
    max_shard_size: str | int = "5GB",
    tokenizer: str | None = None,
) -> Plan:
    spec = model.spec
    fp8_out = dtypes.is_fp8(dtype)  # FP8 Linear weights, the rest bf16 (plan/fp8.py)
    out_dtype = dtypes.resolve("bf16" if fp8_out else dtype, model.dtype)
    V = spec.vocab_size if vocab_size is None else vocab_size
    if not 0 < V <= spec.vocab_size:
        raise NanokernError(f"--vocab-size {V} must be in 1..{spec.vocab_size} (the rows stored)", model.path)
    warnings = list(model.warnings)
    aux: dict[str, bytes] = {}
    out_spec = dataclasses.replace(spec)
    if tokenizer is not None:
        files = tok.tokenizer_files(tokenizer)
        ids, tok_vocab = tok.special_token_ids(files)
        if tok_vocab is not None and tok_vocab > V:
            raise NanokernError(f"tokenizer has {tok_vocab} tokens but the exported vocab has {V} rows", tokenizer)
        if tok_vocab is not None and tok_vocab < V:
            warnings.append(f"the tokenizer has {tok_vocab} tokens, the export {V} rows (padding): --vocab-size {tok_vocab} drops the rest")
        for k, v in ids.items():
            have = getattr(out_spec, f"{k}_token_id")
            if v is not None and have != v:
                warnings.append(f"{k}_token_id {have} in the model config disagrees with the tokenizer ({v}): using {v}")
                setattr(out_spec, f"{k}_token_id", v)
        aux.update(files)
    aux["config.json"] = dump_json(model.family.hf_config(out_spec, out_dtype.name, V))
    aux["generation_config.json"] = dump_json(generation_config(out_spec))

    tensors, zeros, unquantized = [], [], []
    for name, shape, param, _part, _layer, _expert, is_bias in model.family.hf_tensors(spec, V):
        t = model.tensors.get(name)
        if t is None:  # the HF class has it, the source has not (e.g. Qwen2's q/k/v bias): zeros
            zeros.append(name)
            tensors.append(OutTensor(name, shape, out_dtype, []))
            continue
        rows, cols = shape2d(shape)
        # what Nanotron keeps in float32 whatever the model dtype (the MoE router) stays float32:
        # casting it would lose what training kept, and an import would not give it back
        kept = dtype == "keep" or (param.fp32 and t.dtype == dtypes.FLOAT32)
        sources = [Source(name, np.arange(rows, dtype=np.int64), 0, cols)]
        if fp8_out and fp8.quantizable(param, shape, is_bias):
            tensors.extend(fp8.quantized_pair(name, shape, sources))
            continue
        if fp8_out and not is_bias and name.endswith(".weight"):
            unquantized.append(name)
        tensors.append(OutTensor(name, shape, t.dtype if kept else out_dtype, sources))
    if zeros:
        warnings.append(f"{model.family.hf_class} has {len(zeros)} tensor(s) the source does not ({zeros[0]}, ...): written as zeros")

    if fp8_out:
        cfg = json.loads(aux["config.json"])
        cfg["quantization_config"] = fp8.quantization_config(fp8.not_converted(unquantized))
        aux["config.json"] = dump_json(cfg)

    limit = parse_size(max_shard_size)
    shards: list[list[OutTensor]] = []
    cur: list[OutTensor] = []
    cur_size = 0
    units: list[list[OutTensor]] = []  # an FP8 weight and its scales stay in one file, in this order
    for t in tensors:
        if t.quant == "scale_inv":
            units[-1].append(t)
        else:
            units.append([t])
    for unit in units:  # huggingface_hub's greedy split, in state_dict order
        nbytes = sum(t.nbytes for t in unit)
        if nbytes > limit:
            shards.append(unit)
            continue
        if cur and cur_size + nbytes > limit:
            shards.append(cur)
            cur, cur_size = [], 0
        cur.extend(unit)
        cur_size += nbytes
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
    summary = {"dtype": dtypes.FLOAT8_E4M3.name if fp8_out else out_dtype.name, "vocab_size": V, "shards": n, "tied": spec.tie_word_embeddings,
               "hf_class": model.family.hf_class}
    return resolve(Plan(model, "hf", files, aux, warnings, summary))
