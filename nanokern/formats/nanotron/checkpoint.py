"""Reading a Nanotron checkpoint (LlamaConfig or Qwen2Config, any TP x PP layout): every
parameter the architecture table (nanokern/arch) says the model has, from its shard files, with
the checks that name the file at fault. Only metadata is read: headers and configs."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nanokern.arch import decoder, nanotron_config
from nanokern.arch.kinds import Param
from nanokern.arch.spec import ModelSpec
from nanokern.errors import NanokernError
from nanokern.formats.nanotron import layout as L
from nanokern.formats.nanotron.files import _uses_mup, read_model_config, step_dir_of
from nanokern.formats.nanotron.shards import (
    NtParam,
    Shard,
    _agree,
    _check_coverage,
    _check_shard_set,
    _layout,
    _read_shard,
    _show_layout,
)
from nanokern.io import dtypes

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


def nt_params(spec: ModelSpec) -> dict[str, tuple[Param, int | None]]:
    """{Nanotron parameter name: (its Param, its layer)} of every parameter the checkpoint holds."""
    return {name: (p, i) for name, p, i in decoder.nanotron_params(spec)}


def read_step(path: str | os.PathLike, notes: list[str] | None = None) -> NanotronCheckpoint:
    """The checkpoint of a step folder (or of the step a checkpoints_path's latest.txt names; a
    folder of steps without latest.txt: resolve.read_checkpoint). notes: lines that come first
    among the warnings."""
    step_dir = step_dir_of(path)
    if step_dir is None:
        raise NanokernError("not a Nanotron step folder (no latest.txt, no model/ folder)", path)
    cfg = read_model_config(step_dir)
    cfg_file = step_dir / "model_config.json"
    model_dir = step_dir / "model"
    if not model_dir.is_dir():
        raise NanokernError("no model/ folder: checkpoint is empty", step_dir)
    files = sorted(model_dir.rglob("*.safetensors"))
    if not files:
        raise NanokernError("no .safetensors files under model/: checkpoint is empty", model_dir)
    _check_layer_count(cfg, files, model_dir)  # before anything is built per layer
    cls = nanotron_config.config_class(cfg, cfg_file)
    spec = nanotron_config.spec_from_config(cfg, cfg_file)
    _check_heads(spec, cfg_file)
    want = expected_shapes(spec)
    warnings: list[str] = list(notes or ()) + nanotron_config.warnings_for(cfg)
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
    counts = Counter(s.ref.dtype for shards in found.values() for s in shards)
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
        p.dtype = _agree(shards, "dtype", counts.most_common(1)[0][0], "dtype")
        _check_coverage(p, where)
        params[name] = p
    if bad_naming:
        warnings.append("legacy file names (model_model_weight.safetensors_pp-...) found: read them as Nanotron v0.5 wrote them")

    tp, pp = main_layout or (1, 1)
    return checked(step_dir, cfg, cls, spec, params, want, tp, pp, warnings, bad_naming)


def checked(step_dir: Path, cfg: dict, cls: str, spec: ModelSpec, params: dict[str, NtParam], want: dict, tp: int, pp: int,
            warnings: list[str], bad_naming: bool = False) -> NanotronCheckpoint:
    """The checkpoint of parameters read from files (or held in memory by a job: nanokern.live):
    the parameters against the config, an lm_head beside tied embeddings, the RoPE flag's default."""
    _check_params(params, spec, want, step_dir)
    if L.LM_HEAD_NT in params and spec.tie_word_embeddings:
        warnings.append("tie_word_embeddings is true but an lm_head is stored (pre-v0.2 checkpoint): exported untied")
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
    return NanotronCheckpoint(step_dir, cfg, cls, spec, interleaved, params, tp, pp, warnings, bad_naming)


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """Unsharded shape of every parameter the checkpoint holds (lm_head also when tied: a
    pre-v0.2 checkpoint may have one)."""
    shapes = {}
    for name, p, _i in decoder.nanotron_params(spec):
        shapes[name] = (sum(p.sizes(spec)),) if name.endswith(".bias") else p.nt_shape(spec)
    shapes.setdefault(L.LM_HEAD_NT, decoder.LM_HEAD.nt_shape(spec))
    return shapes


def _check_layer_count(cfg: dict, files: list[Path], model_dir: Path) -> None:
    """num_hidden_layers against the layer folders that hold shard files: a config that claims
    more layers than are stored (1000000000, say) is refused before a structure is built per
    layer. (Fewer: the stored layer beyond them is named later, as not belonging to the model.)"""
    stored = {int(parts[2]) for parts in (f.relative_to(model_dir).parts for f in files)
              if len(parts) > 3 and parts[:2] == ("model", "decoder") and parts[2].isdigit() and parts[2].isascii()}
    first_missing = next(i for i in itertools.count() if i not in stored)
    n = cfg["num_hidden_layers"]
    if first_missing < n:
        raise NanokernError(
            f"missing parameters of layer {first_missing}: model_config.json says num_hidden_layers {n}, "
            f"shard files are stored for {len(stored)} layer(s)", model_dir / "model" / "decoder" / str(first_missing))


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
        if params[name].dtype != dtypes.FLOAT32:
            raise NanokernError(f"{name} must be float32 (Nanotron keeps the MoE router in float32), not "
                                f"{params[name].dtype}", params[name].shards[0].ref.path)
    counts = Counter(p.dtype for n, p in params.items() if n not in fp32)
    if len(counts) > 1:
        odd = next(p for n, p in params.items() if n not in fp32 and p.dtype != counts.most_common(1)[0][0])
        raise NanokernError(
            f"mixed dtypes across parameters: {odd.name} is {odd.dtype}, "
            f"the others {counts.most_common(1)[0][0]}",
            odd.shards[0].ref.path,
        )

