"""Read a Nanotron LLaMA checkpoint (any TP x PP layout) into the logical model.

Only metadata is read here: safetensors headers, model_config.json and config.yaml. Shards are
assembled from their slice metadata (never from assumptions about contiguous splits), coverage
is checked (no holes, no overlaps), and qkv_proj / gate_up_proj are split into HF tensors with
the RoPE row permutation applied when the checkpoint is interleaved.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from nanokern import rope
from nanokern.errors import NanokernError
from nanokern.formats import nanotron_layout as L
from nanokern.formats.safetensors_io import TensorRef, read_header
from nanokern.formats.slices import SliceFormatError, box_volume, boxes_overlap, parse_pairs, parse_unsharded_shape
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
        step = latest.read_text().strip()
        if not step:
            raise NanokernError("latest.txt is empty", latest)
        sd = p / step
        if not sd.is_dir():
            raise NanokernError(f"latest.txt names step {step!r} but {sd} does not exist", latest)
        return sd
    if (p / "model").is_dir() or (p / "model_config.json").exists():
        return p
    raise NanokernError("not a Nanotron checkpoint (no latest.txt, no model/ folder)", p)


def is_nanotron(path: str | os.PathLike) -> bool:
    p = Path(path)
    return (p / "latest.txt").is_file() or (p / "model").is_dir()


def read_model_config(step_dir: Path) -> dict:
    f = step_dir / "model_config.json"
    if not f.is_file():
        raise NanokernError("missing model_config.json", f)
    try:
        cfg = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise NanokernError(f"not valid JSON ({e})", f) from None
    if not isinstance(cfg, dict):
        raise NanokernError("not a JSON object", f)
    if cfg.get("is_qwen2_config") or cfg.get("is_starcoder2_config"):
        raise NanokernError("unsupported architecture: only LLaMA checkpoints (is_llama_config) are supported", f)
    need = ("hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise NanokernError(f"missing or non-integer fields: {', '.join(missing)}", f)
    if cfg.get("attention_bias"):
        raise NanokernError("unsupported: attention_bias=true (LLaMA export supports bias-free models)", f)
    if cfg.get("hidden_act", "silu") != "silu":
        raise NanokernError(f"unsupported hidden_act {cfg['hidden_act']!r} (only silu)", f)
    return cfg


def spec_from_config(cfg: dict) -> LlamaSpec:
    nkv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return LlamaSpec(
        hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        num_key_value_heads=nkv,
        vocab_size=cfg["vocab_size"],
        rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        rope_theta=float(cfg.get("rope_theta", 10000.0)),
        rope_scaling=cfg.get("rope_scaling"),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        bos_token_id=cfg.get("bos_token_id", 1),
        eos_token_id=cfg.get("eos_token_id", 2),
        pad_token_id=cfg.get("pad_token_id"),
        hidden_act=cfg.get("hidden_act", "silu"),
        initializer_range=cfg.get("initializer_range", 0.02),
    )


def _uses_mup(step_dir: Path) -> bool:
    f = step_dir / "config.yaml"
    if not f.is_file():
        return False
    import yaml

    try:
        y = yaml.safe_load(f.read_text()) or {}
        return bool(((y.get("model") or {}).get("init_method") or {}).get("use_mup"))
    except yaml.YAMLError:
        return False


def _read_shard(path: Path, info: dict) -> tuple[Shard, tuple[int, ...]]:
    h = read_header(path)
    if list(h.tensors) != ["data"]:
        raise NanokernError(f"expected exactly one tensor named 'data', found {sorted(h.tensors)}", path)
    ref = h.tensors["data"]
    if ref.dtype not in SUPPORTED_DTYPES:
        raise NanokernError(f"unsupported dtype {ref.dtype} (supported: fp32, bf16, fp16)", path)
    full_box = tuple((0, n) for n in ref.shape)
    if not info["sharded"]:
        return Shard(ref, [(full_box, full_box)], None, None, None, None), ref.shape
    md = h.metadata
    for key in ("local_global_slices_pairs", "unsharded_shape"):
        if key not in md:
            raise NanokernError(f"sharded file without {key!r} in its metadata", path)
    try:
        gshape = parse_unsharded_shape(md["unsharded_shape"])
        pairs = parse_pairs(md["local_global_slices_pairs"], ref.shape, gshape)
    except SliceFormatError as e:
        raise NanokernError(f"bad shard metadata: {e}", path) from None
    covered = sum(box_volume(loc) for loc, _ in pairs)
    if covered != ref.numel:
        raise NanokernError(
            f"shard metadata covers {covered} elements but the tensor has shape {list(ref.shape)} ({ref.numel})", path
        )
    sh = Shard(ref, pairs, info["tp"], info["tp_size"], info["pp"], info["pp_size"], info["bad_naming"])
    return sh, gshape


def _check_coverage(p: NtParam, where: Path) -> None:
    boxes = [(glo, s.ref.path) for s in p.shards for _, glo in s.pairs]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if boxes_overlap(boxes[i][0], boxes[j][0]):
                raise NanokernError(
                    f"shards of {p.name} overlap: {os.path.basename(boxes[i][1])} and {os.path.basename(boxes[j][1])}", where
                )
    total = sum(box_volume(b) for b, _ in boxes)
    need = int(np.prod(p.shape)) if p.shape else 1
    if total != need:
        tps = sorted({s.tp_size for s in p.shards if s.tp_size})
        raise NanokernError(
            f"shards of {p.name} leave holes: they cover {total} of {need} elements "
            f"({len(p.shards)} file(s), TP size {tps}); a TP shard is missing?",
            where,
        )


def read_checkpoint(path: str | os.PathLike) -> NanotronCheckpoint:
    step_dir = find_step_dir(path)
    cfg = read_model_config(step_dir)
    spec = spec_from_config(cfg)
    warnings: list[str] = []
    model_dir = step_dir / "model"
    if not model_dir.is_dir():
        raise NanokernError("no model/ folder: checkpoint is empty", step_dir)
    params: dict[str, NtParam] = {}
    files = sorted(model_dir.rglob("*.safetensors"))
    if not files:
        raise NanokernError("no .safetensors files under model/: checkpoint is empty", model_dir)
    bad_naming = False
    for f in files:
        info = L.parse_file_name(f.name)
        if info is None:
            raise NanokernError("unexpected file name (not a Nanotron weight file; MoE/expert shards are unsupported)", f)
        if info["kind"] != "weight":
            raise NanokernError("unexpected bias file: LLaMA has no biases", f)
        rel = f.parent.relative_to(model_dir).parts
        name = ".".join([*rel, "weight"])
        shard, gshape = _read_shard(f, info)
        bad_naming |= info["bad_naming"]
        p = params.get(name)
        if p is None:
            p = params[name] = NtParam(name, gshape, shard.ref.dtype)
        elif p.shape != gshape:
            raise NanokernError(f"unsharded_shape {list(gshape)} disagrees with sibling shards {list(p.shape)}", f)
        elif p.dtype != shard.ref.dtype:
            raise NanokernError(f"dtype {shard.ref.dtype} disagrees with sibling shards ({p.dtype})", f)
        p.shards.append(shard)
    for p in params.values():
        _check_coverage(p, step_dir / L.param_path(p.name).rsplit("/", 1)[0])
    if bad_naming:
        warnings.append("legacy file names (model_model_weight.safetensors_pp-...) found: read them as Nanotron v0.5 wrote them")

    _check_params(params, spec, cfg, step_dir)
    if L.LM_HEAD_NT in params and spec.tie_word_embeddings:
        warnings.append("tie_word_embeddings is true but an lm_head file exists (pre-v0.2 checkpoint): exported untied")
        spec.tie_word_embeddings = False

    if "rope_interleaved" in cfg:
        interleaved = bool(cfg["rope_interleaved"])
    else:
        interleaved = True
        warnings.append("model_config.json has no rope_interleaved: older Nanotron, treated as interleaved (GPT-J) RoPE")
    if spec.rope_scaling:
        warnings.append(f"rope_scaling {spec.rope_scaling} is set, but Nanotron's LLaMA ignores it: the HF model will apply it")
    if _uses_mup(step_dir):
        warnings.append("config.yaml uses muP (use_mup): Nanotron's attention scale is 1/d, HF's is 1/sqrt(d); logits will differ")

    tps = {s.tp_size for p in params.values() for s in p.shards if s.tp_size}
    pps = {s.pp_size for p in params.values() for s in p.shards if s.pp_size}
    if len(tps) > 1 or len(pps) > 1:
        raise NanokernError(f"mixed layouts in one checkpoint: TP sizes {sorted(tps)}, PP sizes {sorted(pps)}", model_dir)
    return NanotronCheckpoint(
        step_dir, cfg, spec, interleaved, params, tps.pop() if tps else 1, pps.pop() if pps else 1, warnings, bad_naming
    )


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


def _check_params(params: dict[str, NtParam], spec: LlamaSpec, cfg: dict, step_dir: Path) -> None:
    cfg_file = step_dir / "model_config.json"
    if spec.hidden_size % spec.num_attention_heads or spec.num_attention_heads % spec.num_key_value_heads:
        raise NanokernError("inconsistent heads: hidden_size, num_attention_heads, num_key_value_heads", cfg_file)
    want = expected_shapes(spec)
    for name, shape in want.items():
        p = params.get(name)
        if p is None:
            if name == L.LM_HEAD_NT and spec.tie_word_embeddings:
                continue
            where = step_dir / L.param_path(name).rsplit("/", 1)[0]
            raise NanokernError(f"missing parameter {name} (no model_weight*.safetensors here)", where)
        if p.shape != shape:
            raise NanokernError(
                f"{name} has shape {list(p.shape)} but model_config.json implies {list(shape)}",
                p.shards[0].ref.path,
            )
    extra = sorted(set(params) - set(want))
    if extra:
        raise NanokernError(
            f"parameter {extra[0]} does not belong to a {spec.num_hidden_layers}-layer LLaMA", params[extra[0]].shards[0].ref.path
        )
    dtypes = {p.dtype for p in params.values()}
    if len(dtypes) > 1:
        raise NanokernError(f"mixed dtypes across parameters: {sorted(map(str, dtypes))}", step_dir / "model")


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
