"""Read a Nanotron LLaMA checkpoint (any TP x PP layout) into the logical model.

Only metadata is read here: safetensors headers, model_config.json and config.yaml. Shards are
assembled from their slice metadata (never from assumptions about contiguous splits), coverage
is checked (no holes, no overlaps), and qkv_proj / gate_up_proj are split into HF tensors with
the RoPE row permutation applied when the checkpoint is interleaved.
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

from nanokern import rope
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
from nanokern.model import EMBED, FINAL_NORM, LM_HEAD, Block, LlamaSpec, LogicalTensor, Model, as_2d, hf_layer_names

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
    spec: LlamaSpec
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
    if cfg.get("is_qwen2_config") or cfg.get("is_starcoder2_config"):
        raise NanokernError("unsupported architecture: only LLaMA checkpoints (is_llama_config) are supported", f)
    need = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
    missing = [k for k in need if not _pos_int(cfg.get(k))]
    if cfg.get("num_key_value_heads") is not None and not _pos_int(cfg["num_key_value_heads"]):
        missing.append("num_key_value_heads")
    if missing:
        raise NanokernError(f"missing or not a positive integer: {', '.join(missing)}", f)
    for key, ok, what in _OPTIONAL_FIELDS:
        if cfg.get(key) is not None and not ok(cfg[key]):
            raise NanokernError(f"{key} must be {what}, not {cfg[key]!r}", f)
    if cfg.get("attention_bias"):
        raise NanokernError("unsupported: attention_bias=true (LLaMA export supports bias-free models)", f)
    if _or(cfg.get("hidden_act"), "silu") != "silu":
        raise NanokernError(f"unsupported hidden_act {cfg['hidden_act']!r} (only silu)", f)
    return cfg


def _pos_int(x) -> bool:
    return type(x) is int and x > 0


def _number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


_OPTIONAL_FIELDS = (  # key, check, what it must be (None always means "the default")
    ("rope_interleaved", lambda x: isinstance(x, bool), "true or false"),
    ("tie_word_embeddings", lambda x: isinstance(x, bool), "true or false"),
    ("attention_bias", lambda x: isinstance(x, bool), "true or false"),
    ("rope_theta", lambda x: _number(x) and x > 0, "a positive number"),
    ("rms_norm_eps", lambda x: _number(x) and x > 0, "a positive number"),
    ("rope_scaling", lambda x: isinstance(x, dict), "an object or null"),
    ("hidden_act", lambda x: isinstance(x, str), "a string"),
    ("max_position_embeddings", _pos_int, "a positive integer"),
)


def spec_from_config(cfg: dict) -> LlamaSpec:
    nkv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return LlamaSpec(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=nkv,
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
    )


def _or(value, default):
    return default if value is None else value


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


def read_checkpoint(path: str | os.PathLike) -> NanotronCheckpoint:
    step_dir = find_step_dir(path)
    cfg = read_model_config(step_dir)
    spec = spec_from_config(cfg)
    cfg_file = step_dir / "model_config.json"
    _check_heads(spec, cfg_file)
    want = expected_shapes(spec)
    warnings: list[str] = []
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
            raise NanokernError("unexpected file name (not a Nanotron weight file; MoE/expert shards are unsupported)", f)
        if info["kind"] != "weight":
            raise NanokernError("unexpected bias file: LLaMA has no biases", f)
        rel = f.parent.relative_to(model_dir).parts
        name = ".".join([*rel, "weight"])
        found.setdefault(name, []).append(_read_shard(f, info))
        bad_naming |= info["bad_naming"]

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
    else:
        interleaved = True
        warnings.append("model_config.json has no rope_interleaved: older Nanotron, treated as interleaved (GPT-J) RoPE")
    if spec.rope_scaling:
        warnings.append(f"rope_scaling {spec.rope_scaling} is set, but Nanotron's LLaMA ignores it: the HF model will apply it")
    if _uses_mup(step_dir):
        warnings.append("config.yaml uses muP (use_mup): Nanotron's attention scale is 1/d, HF's is 1/sqrt(d); logits will differ")
    tp, pp = main_layout or (1, 1)
    return NanotronCheckpoint(step_dir, cfg, spec, interleaved, params, tp, pp, warnings, bad_naming)


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


def expected_shapes(spec: LlamaSpec) -> dict[str, tuple[int, ...]]:
    H, I, V = spec.hidden_size, spec.intermediate_size, spec.vocab_size
    shapes = {L.EMBED_NT: (V, H)}
    for i in range(spec.num_hidden_layers):
        shapes[L.layer_param(i, "input_layernorm")] = (H,)
        shapes[L.layer_param(i, "attn.qkv_proj")] = (spec.q_rows + 2 * spec.kv_rows, H)
        shapes[L.layer_param(i, "attn.o_proj")] = (H, spec.q_rows)
        shapes[L.layer_param(i, "post_attention_layernorm")] = (H,)
        shapes[L.layer_param(i, "mlp.gate_up_proj")] = (2 * I, H)
        shapes[L.layer_param(i, "mlp.down_proj")] = (H, I)
    shapes[L.FINAL_NORM_NT] = (H,)
    shapes[L.LM_HEAD_NT] = (V, H)
    return shapes


def _check_heads(spec: LlamaSpec, cfg_file: Path) -> None:
    H, nq, nkv = spec.hidden_size, spec.num_attention_heads, spec.num_key_value_heads
    if H % nq or nq % nkv:
        raise NanokernError(
            f"inconsistent heads: hidden_size {H} must be a multiple of num_attention_heads {nq}, "
            f"and that a multiple of num_key_value_heads {nkv}",
            cfg_file,
        )
    if spec.head_dim % 2:
        raise NanokernError(f"head dimension {spec.head_dim} (hidden_size / num_attention_heads) must be even for RoPE", cfg_file)


def _check_params(params: dict[str, NtParam], spec: LlamaSpec, want: dict[str, tuple[int, ...]], step_dir: Path) -> None:
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
    extra = sorted(set(params) - set(want))
    if extra:
        raise NanokernError(
            f"parameter {extra[0]} does not belong to the {spec.num_hidden_layers}-layer LLaMA of model_config.json",
            params[extra[0]].shards[0].ref.path,
        )
    dtypes = Counter(p.dtype for p in params.values())
    if len(dtypes) > 1:
        odd = next(p for p in params.values() if p.dtype != dtypes.most_common(1)[0][0])
        raise NanokernError(
            f"mixed dtypes across parameters: {odd.name} is {str(odd.dtype).replace('torch.', '')}, "
            f"the others {str(dtypes.most_common(1)[0][0]).replace('torch.', '')}",
            odd.shards[0].ref.path,
        )


# ---------------------------------------------------------------------------------------------
# Nanotron parameters -> logical HF tensors


def _split_rows(p: NtParam, parts: list[tuple[str, int, int, np.ndarray | None, int]], dtype) -> dict[str, LogicalTensor]:
    """Split a row-fused Nanotron param into logical tensors.

    parts: (hf name, first global row, rows, per-head permutation table or None, head dim).
    """
    out = {}
    for name, g0, n, table, d in parts:
        t = LogicalTensor(name, (n, p.shape[1]), dtype)
        for s in p.shards:
            ref = as_2d(s.ref)
            for (lr, lc), (gr, gc) in s.pairs:
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
    shape = p.shape
    t = LogicalTensor(name, shape, p.dtype)
    for s in p.shards:
        ref = as_2d(s.ref)
        for loc, glo in s.pairs:
            if len(shape) == 1:
                (lc,), (gc,) = loc, glo
                lr, gr = (0, 1), (0, 1)
            else:
                (lr, lc), (gr, gc) = loc, glo
            rows = np.arange(lr[0], lr[1], dtype=np.int64)
            t.blocks.append(Block(ref, rows, lc[0], rows - lr[0] + gr[0], gc[0], lc[1] - lc[0]))
    return t


def to_model(ck: NanotronCheckpoint, rope_interleaved: bool | None = None) -> Model:
    """The logical HF-convention model of a checkpoint. rope_interleaved overrides the config."""
    spec = ck.spec
    interleaved = ck.rope_interleaved if rope_interleaved is None else rope_interleaved
    d = spec.head_dim
    table = rope.nt_from_hf(d) if interleaved else None
    tensors: dict[str, LogicalTensor] = {EMBED: _plain(ck.params[L.EMBED_NT], EMBED)}
    for i in range(spec.num_hidden_layers):
        n = hf_layer_names(i)
        qkv = ck.params[L.layer_param(i, "attn.qkv_proj")]
        q, kv = spec.q_rows, spec.kv_rows
        tensors.update(
            _split_rows(qkv, [(n["q"], 0, q, table, d), (n["k"], q, kv, table, d), (n["v"], q + kv, kv, None, d)], qkv.dtype)
        )
        tensors[n["o"]] = _plain(ck.params[L.layer_param(i, "attn.o_proj")], n["o"])
        gu = ck.params[L.layer_param(i, "mlp.gate_up_proj")]
        I = spec.intermediate_size
        tensors.update(_split_rows(gu, [(n["gate"], 0, I, None, d), (n["up"], I, I, None, d)], gu.dtype))
        tensors[n["down"]] = _plain(ck.params[L.layer_param(i, "mlp.down_proj")], n["down"])
        tensors[n["input_norm"]] = _plain(ck.params[L.layer_param(i, "input_layernorm")], n["input_norm"])
        tensors[n["post_norm"]] = _plain(ck.params[L.layer_param(i, "post_attention_layernorm")], n["post_norm"])
    tensors[FINAL_NORM] = _plain(ck.params[L.FINAL_NORM_NT], FINAL_NORM)
    if not spec.tie_word_embeddings:
        tensors[LM_HEAD] = _plain(ck.params[L.LM_HEAD_NT], LM_HEAD)
    # order as HF's state_dict
    from nanokern.formats.nanotron_writer import source_extras
    from nanokern.model import hf_tensor_shapes

    order = list(hf_tensor_shapes(spec))
    tensors = {k: tensors[k] for k in order}
    owner = L.pp_stage_blocks(
        spec.num_hidden_layers, spec.hidden_size, spec.intermediate_size, spec.num_attention_heads, d, spec.vocab_size, ck.pp
    )
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
        **source_extras(ck.step_dir),
    }
    return Model(spec, tensors, "nanotron", str(ck.step_dir), list(ck.warnings), layout)
