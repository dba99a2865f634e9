"""HuggingFace folders of every family in the architecture table, read into the logical model
(what a folder holds, checked against its config.json); hf_plan.py plans them as save_pretrained
writes them."""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path

import numpy as np

from nanokern import arch
from nanokern.arch import nanotron_config
from nanokern.arch.family import Family
from nanokern.arch.spec import ModelSpec
from nanokern.arch.values import pos_int
from nanokern.errors import NanokernError
from nanokern.formats import hf_fp8
from nanokern.io import dtypes
from nanokern.io.regular import read_text
from nanokern.io.safetensors import close_maps, map_array, read_header
from nanokern.plan.model import Block, HfLayout, LogicalTensor, Model, expert_view, whole_block

EXPORT_MANIFEST = "nanokern-manifest.json"  # what execute/manifest.py writes (MANIFEST), read here a layer above


def is_hf(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "config.json").exists()


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
    """A config.json of a quantized model (`quantization_config`: FP8 ones are read, hf_fp8.py)."""
    return isinstance(cfg.get("quantization_config"), dict)


def read_config(path: str | os.PathLike) -> dict:
    """A HF folder's config.json, parsed (one error line naming it otherwise)."""
    return _read_json(Path(path) / "config.json", "config.json")


def read_hf(path: str | os.PathLike, dequantize: bool | None = None) -> Model:
    """A HF folder as a logical model. An FP8 folder (formats/hf_fp8.py) is refused in one line
    unless `dequantize` says how its weights are read: True, dequantized where a conversion reads
    them (execute/fill.py; their blocks are plan/pieces.Fp8Ref, their logical dtype the folder's
    unquantized one: what `--dtype keep` writes; nothing is read here); False, float8_e4m3fn as
    stored (what inspect and verify read, with hf_fp8.fp8_pairs for their scales)."""
    d = Path(path)
    cfg_file = d / "config.json"
    cfg = _read_json(cfg_file, "config.json")
    family_of(cfg, cfg_file)
    fp8_cfg = hf_fp8.fp8_config(cfg, cfg_file) if is_quantized(cfg) else None
    if fp8_cfg is not None and dequantize is None:
        raise NanokernError("an FP8 folder: convert it first (nanokern convert --to hf --dtype bf16)", d)
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
    fp8 = hf_fp8.fp8_pairs(refs, fp8_cfg) if fp8_cfg is not None else {}
    fp8_dtype = hf_fp8.folder_dtype(refs)
    if fp8 and dequantize:
        refs.update({n: w.ref for n, w in fp8.items()})
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
        if ref.dtype not in dtypes.FLOATS and name not in fp8:
            raise NanokernError(f"{name}: unsupported dtype {ref.dtype} (supported: fp32, bf16, fp16)", ref.path)
        tensors[name] = LogicalTensor(name, shape, fp8_dtype if name in fp8 and dequantize else ref.dtype, [whole_block(ref)])
    for z in family.zero_means_absent:
        names = z.names(spec)
        if names and _all_zero_bits(tensors[n].blocks[0].ref for n in names):
            spec = z.off(spec)
            for n in names:
                del tensors[n]
            warnings.append(f"every {z.what} tensor is zero: imported without them")
    if spec.tie_word_embeddings and "lm_head.weight" in refs:
        warnings.append("tie_word_embeddings is true: the stored lm_head.weight is ignored")
    if fp8:
        warnings.append(f"FP8 folder ({fp8_cfg.describe()}): {len(fp8)} weight(s) "
                        + ("dequantized: e4m3 x weight_scale_inv in float32, then the cast" if dequantize else "read as stored"))
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
