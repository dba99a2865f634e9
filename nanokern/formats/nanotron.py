"""Read a Nanotron checkpoint (LlamaConfig or Qwen2Config, any TP x PP layout) into the logical model.

Only metadata is read here: safetensors headers, model_config.json and config.yaml. Which
parameters must exist, and what HF tensors each holds, comes from the architecture table
(nanokern/arch). Shards are assembled from their slice metadata (never from assumptions about
contiguous splits), coverage is checked (no holes, no overlaps), and every parameter is cut into
HF tensors by its kind: fused parts split (with the RoPE row permutation on q/k weights and
biases when the checkpoint is interleaved), experts transposed.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nanokern import arch, rope
from nanokern.arch import decoder, nanotron_config
from nanokern.arch.kinds import Kind, Param
from nanokern.arch.spec import ModelSpec
from nanokern.errors import NanokernError
from nanokern.formats import nanotron_layout as L
from nanokern.formats.safetensors_io import TensorRef, read_header
from nanokern.formats.slices import (
    SliceFormatError,
    box_volume,
    boxes_overlap,
    check_tiling,
    parse_pairs,
    parse_unsharded_shape,
)
from nanokern.model import Block, LogicalTensor, Model, as_2d, expert_view

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass
class Shard:
    """One file of a parameter: which slice of the unsharded tensor it holds."""

    ref: TensorRef
    pairs: list  # [(local box, global box)]
    tp: int | None
    tp_size: int | None
    pp: int | None
    pp_size: int | None
    bad_naming: bool = False
    gshape: tuple[int, ...] = ()  # unsharded_shape (the stored shape for a non-sharded file)

    @property
    def dtype(self) -> torch.dtype:
        return self.ref.dtype


@dataclass
class NtParam:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    shards: list[Shard] = field(default_factory=list)


@dataclass
class NanotronCheckpoint:
    step_dir: Path
    config: dict  # model_config.json as stored
    config_class: str  # "llama" (LlamaConfig) or "qwen2" (Qwen2Config)
    spec: ModelSpec
    rope_interleaved: bool
    params: dict[str, NtParam]
    tp: int
    pp: int
    warnings: list[str]
    bad_naming: bool


def find_step_dir(path: str | os.PathLike) -> Path:
    """A checkpoints_path with latest.txt, or a step folder holding model/ and model_config.json."""
    p = Path(path)
    if not p.exists():
        raise NanokernError("does not exist", p)
    if not p.is_dir():
        raise NanokernError("is not a directory", p)
    latest = p / "latest.txt"
    if latest.is_file():
        step = _read_text(latest).strip()
        if not step:
            raise NanokernError("latest.txt is empty", latest)
        if not _STEP.match(step):
            raise NanokernError(f"latest.txt must hold a step number, not {step[:40]!r}", latest)
        sd = p / step
        if not sd.is_dir():
            raise NanokernError(f"names step {step!r} but {sd} does not exist", latest)
        return sd
    if (p / "model").is_dir() or (p / "model_config.json").exists():
        return p
    raise NanokernError("not a Nanotron checkpoint (no latest.txt, no model/ folder)", p)


_STEP = re.compile(r"^[A-Za-z0-9_.-]+$")  # a folder name beside latest.txt, never a path


def _read_text(f: Path) -> str:
    try:
        return f.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise NanokernError("not a UTF-8 text file", f) from None
    except OSError as e:
        raise NanokernError(f"cannot read: {e.strerror or e}", f) from None


def is_nanotron(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "latest.txt").is_file() or (p / "model").is_dir()


def read_model_config(step_dir: Path) -> dict:
    f = step_dir / "model_config.json"
    if not f.is_file():
        raise NanokernError("missing model_config.json", f)
    try:
        cfg = json.loads(_read_text(f))
    except json.JSONDecodeError as e:
        raise NanokernError(f"not valid JSON ({e})", f) from None
    if not isinstance(cfg, dict):
        raise NanokernError("not a JSON object", f)
    nanotron_config.check(cfg, f)
    return cfg


def _uses_mup(step_dir: Path) -> bool:
    f = step_dir / "config.yaml"
    if not f.is_file():
        return False
    import yaml

    try:
        y = yaml.safe_load(_read_text(f))
    except yaml.YAMLError as e:
        raise NanokernError(f"not valid YAML ({str(e).splitlines()[0]})", f) from None
    if y is None:
        return False
    if not isinstance(y, dict):
        raise NanokernError("not a YAML mapping (a Nanotron training config)", f)
    model = y.get("model") or {}
    init = model.get("init_method") if isinstance(model, dict) else None
    return bool(init.get("use_mup")) if isinstance(init, dict) else False


def _read_shard(path: Path, info: dict) -> Shard:
    h = read_header(path)
    if list(h.tensors) != ["data"]:
        raise NanokernError(f"expected exactly one tensor named 'data', found {sorted(h.tensors)}", path)
    ref = h.tensors["data"]
    if ref.dtype not in SUPPORTED_DTYPES:
        raise NanokernError(f"unsupported dtype {str(ref.dtype).replace('torch.', '')} (supported: fp32, bf16, fp16)", path)
    full_box = tuple((0, n) for n in ref.shape)
    if not info["sharded"]:
        return Shard(ref, [(full_box, full_box)], None, None, None, None, False, ref.shape)
    md = h.metadata
    missing = [k for k in ("local_global_slices_pairs", "unsharded_shape") if k not in md]
    if missing:
        raise NanokernError(f"sharded file without {' and '.join(map(repr, missing))} in its metadata", path)
    if "version" in md and not _VERSION.match(md["version"]):
        raise NanokernError(f"bad shard metadata: version {md['version'][:40]!r} is not a version number", path)
    try:
        gshape = parse_unsharded_shape(md["unsharded_shape"])
        pairs = parse_pairs(md["local_global_slices_pairs"], ref.shape, gshape)
        check_tiling([loc for loc, _ in pairs], ref.shape, f"local slices of the stored {list(ref.shape)} tensor")
    except SliceFormatError as e:
        raise NanokernError(f"bad shard metadata: {e}", path) from None
    return Shard(ref, pairs, info["tp"], info["tp_size"], info["pp"], info["pp_size"], info["bad_naming"], gshape)


_VERSION = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def _layout(s: Shard) -> tuple[int, int] | None:
    return None if s.tp_size is None else (s.tp_size, s.pp_size)


def _show_layout(lay: tuple[int, int] | None) -> str:
    return "non-sharded" if lay is None else f"TP {lay[0]} x PP {lay[1]}"


def _check_shard_set(p: NtParam, where: Path, layout: tuple[int, int] | None) -> None:
    """One file per TP rank, all from the checkpoint's layout: catches stale files left by an
    earlier layout in the same folder and missing TP shards with a message saying so."""
    names = lambda shards: ", ".join(sorted(os.path.basename(s.ref.path) for s in shards))  # noqa: E731
    lays = {_layout(s) for s in p.shards}
    if len(lays) > 1:
        keep = layout if layout in lays else Counter(_layout(s) for s in p.shards).most_common(1)[0][0]
        stale = [s for s in p.shards if _layout(s) != keep]
        raise NanokernError(
            f"files of {p.name} from different layouts in one folder: {names(stale)} ({_show_layout(_layout(stale[0]))}) "
            f"beside {_show_layout(keep)} shards; stale file(s) from another layout?",
            where,
        )
    lay = lays.pop()
    if lay is None:
        if len(p.shards) > 1:  # cannot happen with one file name per folder, kept for safety
            raise NanokernError(f"several non-sharded files for {p.name}: {names(p.shards)}", where)
        return
    tp_size, pp_size = lay
    for s in p.shards:
        if not (s.tp < tp_size and s.pp < pp_size):
            raise NanokernError("rank out of range in the file name", s.ref.path)
    by_rank: dict[int, list[Shard]] = {}
    for s in p.shards:
        by_rank.setdefault(s.tp, []).append(s)
    for r, group in sorted(by_rank.items()):
        if len(group) > 1:
            raise NanokernError(f"{len(group)} files for TP rank {r} of {p.name}: {names(group)}", where)
    lost = [r for r in range(tp_size) if r not in by_rank]
    if lost:
        pp = p.shards[0].pp
        expect = where / os.path.basename(L.param_path(p.name, pp, pp_size, lost[0], tp_size))
        raise NanokernError(
            f"missing TP shard(s) {lost} of {tp_size} for {p.name} (found {names(p.shards)})", expect
        )


def _check_coverage(p: NtParam, where: Path) -> None:
    """The shards' global slices must tile the unsharded tensor: no overlap, no hole."""
    boxes = [(glo, os.path.basename(s.ref.path)) for s in p.shards for _, glo in s.pairs]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes_overlap(boxes[i][0], boxes[j][0]):
                (x, fx), (y, fy) = boxes[i], boxes[j]
                raise NanokernError(f"shards of {p.name} overlap: {_box(x)} of {fx} and {_box(y)} of {fy}", where)
    total = sum(box_volume(b) for b, _ in boxes)
    need = math.prod(p.shape)
    if total != need:
        raise NanokernError(
            f"shards of {p.name} leave holes: their slices cover {total} of the {need} elements "
            f"of the unsharded {list(p.shape)} tensor ({len(p.shards)} file(s))",
            where,
        )


def _box(box) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in box) + "]"


def nt_params(spec: ModelSpec) -> dict[str, tuple[Param, int | None]]:
    """{Nanotron parameter name: (its Param, its layer)} of every parameter the checkpoint holds."""
    return {name: (p, i) for name, p, i in decoder.nanotron_params(spec)}


def read_checkpoint(path: str | os.PathLike) -> NanotronCheckpoint:
    step_dir = find_step_dir(path)
    cfg = read_model_config(step_dir)
    cfg_file = step_dir / "model_config.json"
    cls = nanotron_config.config_class(cfg, cfg_file)
    spec = nanotron_config.spec_from_config(cfg, cfg_file)
    _check_heads(spec, cfg_file)
    want = expected_shapes(spec)
    warnings: list[str] = nanotron_config.warnings_for(cfg)
    model_dir = step_dir / "model"
    if not model_dir.is_dir():
        raise NanokernError("no model/ folder: checkpoint is empty", step_dir)
    files = sorted(model_dir.rglob("*.safetensors"))
    if not files:
        raise NanokernError("no .safetensors files under model/: checkpoint is empty", model_dir)
    bad_naming = False
    found: dict[str, list[Shard]] = {}
    for f in files:
        info = L.parse_file_name(f.name)
        if info is None:
            raise NanokernError("unexpected file name (not a Nanotron weight file)", f)
        if info["ep_size"] not in (None, 1):
            raise NanokernError(f"expert-parallel shard (exp-rank of {info['ep_size']}): Nanotron writes experts once", f)
        rel = f.parent.relative_to(model_dir).parts
        name = ".".join([*rel, info["kind"]])
        found.setdefault(name, []).append(_read_shard(f, info))
        bad_naming |= info["bad_naming"]

    extra = sorted(set(found) - set(want))
    if extra:
        raise NanokernError(
            f"parameter {extra[0]} does not belong to the {spec.num_hidden_layers}-layer model of model_config.json"
            + (f" ({', '.join(spec.features())})" if spec.features() else " (no bias, no MoE)"),
            found[extra[0]][0].ref.path,
        )
    layouts = Counter(_layout(s) for shards in found.values() for s in shards if s.tp_size is not None)
    main_layout = layouts.most_common(1)[0][0] if layouts else None
    dtypes = Counter(s.ref.dtype for shards in found.values() for s in shards)
    params: dict[str, NtParam] = {}
    for name, shards in found.items():
        where = step_dir / L.param_path(name).rsplit("/", 1)[0]
        p = NtParam(name, shards[0].gshape, shards[0].ref.dtype, shards)
        _check_shard_set(p, where, main_layout)
        lay = _layout(shards[0])
        if lay is not None and lay != main_layout:
            raise NanokernError(
                f"{name} is stored as {_show_layout(lay)} but the rest of the checkpoint is {_show_layout(main_layout)}", where
            )
        p.shape = _agree(shards, "gshape", want.get(name), "unsharded_shape")
        p.dtype = _agree(shards, "dtype", dtypes.most_common(1)[0][0], "dtype")
        _check_coverage(p, where)
        params[name] = p
    if bad_naming:
        warnings.append("legacy file names (model_model_weight.safetensors_pp-...) found: read them as Nanotron v0.5 wrote them")

    _check_params(params, spec, want, step_dir)
    if L.LM_HEAD_NT in params and spec.tie_word_embeddings:
        warnings.append("tie_word_embeddings is true but an lm_head file exists (pre-v0.2 checkpoint): exported untied")
        spec.tie_word_embeddings = False

    if "rope_interleaved" in cfg and cfg["rope_interleaved"] is not None:
        interleaved = bool(cfg["rope_interleaved"])
    elif cls == "qwen2":  # Qwen2Config came after the flag; its default is False
        interleaved = False
        warnings.append("model_config.json has no rope_interleaved: Qwen2Config's default, half-split (HF) RoPE")
    else:
        interleaved = True
        warnings.append("model_config.json has no rope_interleaved: older Nanotron, treated as interleaved (GPT-J) RoPE")
    if spec.rope_scaling:
        warnings.append(f"rope_scaling {spec.rope_scaling} is set, but Nanotron ignores it: the HF model will apply it")
    if _uses_mup(step_dir):
        warnings.append("config.yaml uses muP (use_mup): Nanotron's attention scale is 1/d, HF's is 1/sqrt(d); logits will differ")
    tp, pp = main_layout or (1, 1)
    return NanotronCheckpoint(step_dir, cfg, cls, spec, interleaved, params, tp, pp, warnings, bad_naming)


def _agree(shards: list[Shard], attr: str, expected, what: str):
    """The value every shard of a parameter has for `attr`; when they differ, name the file(s)
    that differ from `expected` (or from the majority)."""
    values = Counter(getattr(s, attr) for s in shards)
    if len(values) == 1:
        return next(iter(values))
    good = expected if expected in values else values.most_common(1)[0][0]
    bad = next(s for s in shards if getattr(s, attr) != good)
    show = lambda v: list(v) if isinstance(v, tuple) else str(v).replace("torch.", "")  # noqa: E731
    raise NanokernError(f"{what} {show(getattr(bad, attr))} disagrees with its sibling shards ({show(good)})", bad.ref.path)


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Unsharded shape of every parameter the checkpoint holds (lm_head also when tied: a
    pre-v0.2 checkpoint may have one)."""
    shapes = {}
    for name, p, _i in decoder.nanotron_params(spec):
        shapes[name] = (sum(p.sizes(spec)),) if name.endswith(".bias") else p.nt_shape(spec)
    shapes.setdefault(L.LM_HEAD_NT, decoder.LM_HEAD.nt_shape(spec))
    return shapes


def _check_heads(spec: ModelSpec, cfg_file: Path) -> None:
    H, nq, nkv = spec.hidden_size, spec.num_attention_heads, spec.num_key_value_heads
    if H % nq or nq % nkv:
        raise NanokernError(
            f"inconsistent heads: hidden_size {H} must be a multiple of num_attention_heads {nq}, "
            f"and that a multiple of num_key_value_heads {nkv}",
            cfg_file,
        )
    if spec.head_dim % 2:
        raise NanokernError(f"head dimension {spec.head_dim} (hidden_size / num_attention_heads) must be even for RoPE", cfg_file)


def _check_params(params: dict[str, NtParam], spec: ModelSpec, want: dict[str, tuple[int, ...]], step_dir: Path) -> None:
    cfg_file = step_dir / "model_config.json"
    wrong = [(name, p) for name, p in params.items() if name in want and p.shape != want[name]]
    if len(wrong) == 1:
        name, p = wrong[0]
        raise NanokernError(
            f"{name} has shape {list(p.shape)} but model_config.json implies {list(want[name])}", p.shards[0].ref.path
        )
    if wrong:
        name, p = wrong[0]
        raise NanokernError(
            f"does not match the stored tensors: {name} has shape {list(p.shape)}, the config implies {list(want[name])} "
            f"({len(wrong) - 1} more parameter(s) disagree)",
            cfg_file,
        )
    for name in want:
        if name not in params:
            if name == L.LM_HEAD_NT and spec.tie_word_embeddings:
                continue
            where = step_dir / L.param_path(name).rsplit("/", 1)[0]
            raise NanokernError(f"missing parameter {name} (no model_weight*.safetensors here)", where)
    table = nt_params(spec)
    fp32 = {name for name, (p, _i) in table.items() if p.fp32}
    for name in fp32 & set(params):
        if params[name].dtype != torch.float32:
            raise NanokernError(f"{name} must be float32 (Nanotron keeps the MoE router in float32), not "
                                f"{str(params[name].dtype).replace('torch.', '')}", params[name].shards[0].ref.path)
    dtypes = Counter(p.dtype for n, p in params.items() if n not in fp32)
    if len(dtypes) > 1:
        odd = next(p for n, p in params.items() if n not in fp32 and p.dtype != dtypes.most_common(1)[0][0])
        raise NanokernError(
            f"mixed dtypes across parameters: {odd.name} is {str(odd.dtype).replace('torch.', '')}, "
            f"the others {str(dtypes.most_common(1)[0][0]).replace('torch.', '')}",
            odd.shards[0].ref.path,
        )


# ---------------------------------------------------------------------------------------------
# Nanotron parameters -> logical HF tensors (by parameter kind)


def _pairs_2d(s: Shard):
    """The shard's slice pairs over 2-D views (1-D tensors as [N, 1] columns)."""
    for loc, glo in s.pairs:
        yield ((loc[0], (0, 1)), (glo[0], (0, 1))) if len(loc) == 1 else (loc, glo)


def _split_rows(p: NtParam, parts: list[tuple[str, int, int, np.ndarray | None, int]]) -> dict[str, LogicalTensor]:
    """Split a row-fused Nanotron param into logical tensors.

    parts: (hf name, first global row, rows, per-head permutation table or None, head dim).
    """
    out = {}
    cols = p.shape[1] if len(p.shape) == 2 else None
    for name, g0, n, table, d in parts:
        t = LogicalTensor(name, (n,) if cols is None else (n, cols), p.dtype)
        for s in p.shards:
            ref = as_2d(s.ref)
            for (lr, lc), (gr, gc) in _pairs_2d(s):
                a, b = max(gr[0], g0), min(gr[1], g0 + n)
                if a >= b:
                    continue
                g = np.arange(a, b, dtype=np.int64)
                src_rows = g - gr[0] + lr[0]
                dst_rows = g - g0
                if table is not None:
                    dst_rows = rope.permute_rows(dst_rows, d, table)
                t.blocks.append(Block(ref, src_rows, lc[0], dst_rows, gc[0], lc[1] - lc[0]))
        out[name] = t
    return out


def _plain(p: NtParam, name: str) -> LogicalTensor:
    t = LogicalTensor(name, p.shape, p.dtype)
    for s in p.shards:
        ref = as_2d(s.ref)
        for (lr, lc), (gr, gc) in _pairs_2d(s):
            rows = np.arange(lr[0], lr[1], dtype=np.int64)
            t.blocks.append(Block(ref, rows, lc[0], rows - lr[0] + gr[0], gc[0], lc[1] - lc[0]))
    return t


def _experts(p: NtParam, param: Param, spec: ModelSpec, layer: int) -> dict[str, LogicalTensor]:
    """[E, in, sum(parts)] input-major -> one [part, in] tensor per expert and part (transposed)."""
    (s,) = p.shards
    E, cols, _ = p.shape
    out = {}
    for e in range(E):
        ref = expert_view(s.ref, e)
        off = 0
        for part, n in zip(param.parts, param.sizes(spec)):
            name = param.hf_name(part, layer, e)
            rows = np.arange(n, dtype=np.int64)
            out[name] = LogicalTensor(name, (n, cols), p.dtype, [Block(ref, rows + off, 0, rows, 0, cols, transpose=True)])
            off += n
    return out


def to_model(ck: NanotronCheckpoint, rope_interleaved: bool | None = None, hf_arch: str | None = None) -> Model:
    """The logical HF-convention model of a checkpoint, named for the HF class that holds it
    (hf_arch forces one). rope_interleaved overrides the config."""
    spec = ck.spec
    family = arch.choose(spec, hf_arch, ck.step_dir / "model_config.json")
    interleaved = ck.rope_interleaved if rope_interleaved is None else rope_interleaved
    d = spec.head_dim
    table = rope.nt_from_hf(d) if interleaved else None
    tensors: dict[str, LogicalTensor] = {}
    for name, (param, i) in nt_params(spec).items():
        p = ck.params.get(name)
        if p is None:  # lm_head of a tied checkpoint
            continue
        if param.kind is Kind.EXPERTS:
            tensors.update(_experts(p, param, spec, i))
        elif param.kind is Kind.COLUMN:
            is_bias = name.endswith(".bias")
            parts, g0 = [], 0
            for part, n in zip(param.parts, param.sizes(spec)):
                parts.append((param.hf_name(part, i, bias=is_bias), g0, n, table if part.rope else None, d))
                g0 += n
            tensors.update(_split_rows(p, parts))
        else:
            name_hf = param.hf_name(param.parts[0], i)
            tensors[name_hf] = _plain(p, name_hf)
    order = [t[0] for t in family.hf_tensors(spec)]
    tensors = {k: tensors[k] for k in [*[n for n in order if n in tensors], *[n for n in tensors if n not in order]]}
    owner = L.pp_stage_blocks(spec, spec.vocab_size, ck.pp)
    layout = {
        "format": "nanotron",
        "step_dir": str(ck.step_dir),
        "tp": ck.tp,
        "pp": ck.pp,
        "rope_interleaved": interleaved,
        "files": sum(len(p.shards) for p in ck.params.values()),
        "pp_owner": owner,
        "bad_naming": ck.bad_naming,
        "model_config": ck.config,
        "config_class": ck.config_class,
        **source_extras(ck.step_dir),
    }
    return Model(spec, family, tensors, "nanotron", str(ck.step_dir), list(ck.warnings), layout)


def source_extras(step_dir: Path) -> dict:
    """Facts of a Nanotron source that a reshard carries over (configs)."""
    import yaml

    out = {"step": step_dir.name}
    for key, name, load, errors in (("checkpoint_metadata", "checkpoint_metadata.json", json.loads, json.JSONDecodeError),
                                    ("config_yaml", "config.yaml", yaml.safe_load, yaml.YAMLError)):
        f = step_dir / name
        if f.is_file():
            try:
                out[key] = load(f.read_text())
            except (errors, UnicodeDecodeError, OSError) as e:
                raise NanokernError(f"unreadable {name} ({e})", f) from None
    return out
