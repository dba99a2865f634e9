"""The job's shards as the checkpoint the file converter reads: every rank's metadata (names,
shapes, dtypes, slice pairs; no tensor data) gathered over the grid, checked by the checkpoint
reader's own checks, and turned into the same logical model (formats/nanotron/mapping.py) and
the same HF plan (formats/hf_plan.py: names, order, files, headers, configs) as `nanokern convert`.
Only the source bytes differ: a shard is `live:<name>@<tp rank>`, a tensor a rank holds in
memory, and a plan piece reads a "unit" of those bytes, gathered over TP and PP (stream.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nanokern.arch import nanotron_config
from nanokern.errors import NanokernError
from nanokern.formats import hf_plan
from nanokern.formats.nanotron import layout as L
from nanokern.formats.nanotron import to_model
from nanokern.formats.nanotron.checkpoint import NanotronCheckpoint, _check_heads, checked, expected_shapes
from nanokern.formats.nanotron.shards import NtParam, Shard, _agree, _check_coverage, _check_shard_set
from nanokern.io import dtypes
from nanokern.io.safetensors import TensorRef
from nanokern.live.comm import Grid
from nanokern.live.source import RankShards
from nanokern.plan import Plan
from nanokern.plan.model import Model

IN_MEMORY = Path("<in-memory model>")  # where messages point for a model with no checkpoint folder


@dataclass
class ParamInfo:
    owner: int  # the PP rank whose copy is read (the lowest holding it)
    sharded: bool
    dtype: dtypes.DType
    nbytes: list[int]  # bytes of the local tensor per TP rank (one entry when replicated)


@dataclass
class LivePlan:
    plan: Plan
    params: dict[str, ParamInfo]
    model: Model  # the logical model the plan was made from


def ref_path(name: str, tp: int) -> str:
    return f"live:{name}@{tp}"


def parse_ref(path: str) -> tuple[str, int]:
    name, tp = path[len("live:"):].rsplit("@", 1)
    return name, int(tp)


def unit_of(ref: TensorRef, info: ParamInfo) -> tuple[str, int, int]:
    """A piece's unit: (name, byte offset, bytes per TP slot). A sharded parameter is one unit
    (every TP rank's whole shard); a replicated one is read by the span a piece names (one
    expert of an [E, in, out] tensor), so the largest gather is one expert, not E."""
    name, _ = parse_ref(ref.path)
    if info.sharded:
        return name, 0, max(info.nbytes)
    return name, ref.offset, ref.nbytes


def describe(sh: RankShards) -> dict:
    """This rank's metadata, small enough to gather: {name: (dtype code, shape, pairs, gshape)}."""
    return {n: (dtypes.of_torch(p.tensor.dtype).code, tuple(p.tensor.shape), p.pairs, p.gshape) for n, p in sh.params.items()}


def checkpoint(metas: list[dict], cfg: dict, g: Grid, step_dir: Path | None) -> tuple[NanotronCheckpoint, dict]:
    """The in-memory checkpoint of the grid's metadata, checked as read_checkpoint checks files."""
    step_dir = step_dir or IN_MEMORY
    cfg_file = step_dir / "model_config.json"
    nanotron_config.check(cfg, cfg_file)
    cls = nanotron_config.config_class(cfg, cfg_file)
    spec = nanotron_config.spec_from_config(cfg, cfg_file)
    _check_heads(spec, cfg_file)
    want = expected_shapes(spec)
    warnings = nanotron_config.warnings_for(cfg)
    holders: dict[str, list] = {}
    for index, meta in enumerate(metas):
        pp, tp = divmod(index, g.tp_size)
        for name, entry in meta.items():
            holders.setdefault(name, []).append((pp, tp, entry))
    extra = sorted(set(holders) - set(want))
    if extra:
        raise NanokernError(f"parameter {extra[0]} does not belong to the {spec.num_hidden_layers}-layer model of the config", cfg_file)
    params, infos = {}, {}
    for name in [n for n in want if n in holders]:
        owner = min(pp for pp, _, _ in holders[name])
        here = {tp: e for pp, tp, e in holders[name] if pp == owner}
        sharded = here[min(here)][2] is not None
        shards = []
        for tp, (code, shape, pairs, gshape) in sorted(here.items()):
            ref = TensorRef(ref_path(name, tp if sharded else 0), 0, dtypes.BY_CODE[code], tuple(shape))
            if pairs is None:
                full = tuple((0, n) for n in shape)
                shards.append(Shard(ref, [(full, full)], None, None, None, None, False, tuple(shape)))
            else:
                shards.append(Shard(ref, list(pairs), tp, g.tp_size, owner, g.pp_size, False, tuple(gshape)))
            if not sharded:
                break  # replicated: one copy (the lowest TP rank's) is read
        where = step_dir / L.param_path(name).rsplit("/", 1)[0]
        p = NtParam(name, shards[0].gshape, shards[0].ref.dtype, shards)
        _check_shard_set(p, where, (g.tp_size, g.pp_size) if sharded else None)
        p.shape = _agree(shards, "gshape", want.get(name), "unsharded_shape")
        p.dtype = _agree(shards, "dtype", p.dtype, "dtype")
        _check_coverage(p, where)
        params[name] = p
        infos[name] = ParamInfo(owner, sharded, p.dtype, [s.ref.nbytes for s in shards])
    return checked(step_dir, cfg, cls, spec, params, want, g.tp_size, g.pp_size, warnings), infos


def live_plan(sh: RankShards, g: Grid, dtype: str = "bf16", vocab_size: int | None = None, max_shard_size="5GB",
              tokenizer: str | None = None, rope_interleaved: bool | None = None, hf_arch: str | None = None,
              fp8_scale: str = "float") -> LivePlan:
    """The HF plan `nanokern convert` makes of the saved checkpoint, over the grid's in-memory
    shards (dtype "fp8": its FP8 export, fp8_scale its scales: plan/fp8.py). Collective (gathers
    metadata objects, no tensors)."""
    metas = g.all_gather_object(describe(sh))
    ck, infos = checkpoint(metas, sh.config, g, sh.step_dir)
    model = to_model(ck, rope_interleaved, hf_arch)
    return LivePlan(hf_plan.plan_hf(model, dtype, vocab_size, max_shard_size, tokenizer, fp8_scale), infos, model)
