"""What one rank of a running job holds: its shards of every parameter under the name Nanotron's
`save_weights` gives it (the tie name for a tied parameter), with the slice metadata the files
would carry, and the model config. Built from a checkpoint (`load_rank`, one rank's files read
into memory, as the job holds them) or from a live Nanotron model (`from_module`: its
NanotronParameters' sharded and tied infos, duck-typed: nothing of Nanotron is imported).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.formats.nanotron import layout as L
from nanokern.formats.nanotron import read_checkpoint
from nanokern.io import dtypes
from nanokern.io.slices import SliceFormatError, check_tiling, parse_pairs


@dataclass
class LocalParam:
    tensor: object  # torch.Tensor: this rank's shard, contiguous (read live on every call)
    pairs: list | None  # [(local box, global box)] of a sharded parameter; None: replicated
    gshape: tuple[int, ...]  # unsharded shape


@dataclass
class RankShards:
    """One rank's parameters: {Nanotron name: LocalParam}, and model_config.json as a dict."""

    params: dict[str, LocalParam]
    config: dict
    step_dir: Path | None = None  # the checkpoint they came from (its config.yaml, metadata)
    notes: list[str] = field(default_factory=list)


def load_rank(step_dir, tp_rank: int, pp_rank: int, device="cpu") -> RankShards:
    """This rank's shards of a checkpoint, in memory (copies, not maps), as a TP x PP job holds
    them: the sharded files of (pp_rank, tp_rank), the replicated parameters of its PP stage
    (every TP rank holds them), and, with tied embeddings, the embedding also on the stage that
    holds lm_head (the same tensor under the tie name)."""
    from nanokern.io.safetensors import close_maps, map_tensor

    ck = read_checkpoint(step_dir)
    if not (0 <= tp_rank < ck.tp and 0 <= pp_rank < ck.pp):
        raise NanokernError(f"rank (tp {tp_rank}, pp {pp_rank}) is outside the checkpoint's TP {ck.tp} x PP {ck.pp}",
                            ck.step_dir)
    owner = L.pp_stage_blocks(ck.spec, ck.spec.vocab_size, ck.pp)
    tied_here = ck.spec.tie_word_embeddings and owner["lm_head"] == pp_rank
    params, maps = {}, {}
    try:
        for name, p in ck.params.items():
            for s in p.shards:
                if s.tp is not None:
                    mine = s.tp == tp_rank and s.pp == pp_rank
                else:
                    mine = owner[L.block_of(name)] == pp_rank
                mine = mine or (tied_here and name == L.EMBED_NT and (s.tp is None or s.tp == tp_rank))
                if mine:
                    t = map_tensor(s.ref, maps).to(device=device, copy=True)
                    params[name] = LocalParam(t, None if s.tp is None else list(s.pairs), tuple(p.shape))
    finally:
        close_maps(maps.values())
    return RankShards(params, dict(ck.config), ck.step_dir)


def _slice_text(s) -> str:
    return ",".join("None" if x is None else str(int(x)) for x in (s.start, s.stop, s.step))


def _pairs_of(name: str, info, local_shape, gshape) -> list:
    """ShardedInfo.local_global_slices_pairs as boxes, read by the files' own parser."""
    text = ";".join("|".join(map(_slice_text, pr.local_slices)) + "#" + "|".join(map(_slice_text, pr.global_slices))
                    for pr in info.local_global_slices_pairs)
    try:
        pairs = parse_pairs(text, tuple(local_shape), gshape)
        check_tiling([loc for loc, _ in pairs], tuple(local_shape), f"local slices of the {list(local_shape)} shard")
    except SliceFormatError as e:
        raise NanokernError(f"{name}: bad sharded info: {e}") from None
    return pairs


def from_module(model, config=None) -> RankShards:
    """A live Nanotron model (its NanotronParameters) as this rank's shards. Names are those
    `save_weights` writes: the state_dict name, or the tie name (with its root module's prefix)
    for a tied parameter; the config is `model.config` (a dataclass or a dict)."""
    while type(model).__name__ == "DistributedDataParallel":  # Nanotron saves the unwrapped model
        model = model.module
    cfg = config if config is not None else getattr(model, "config", None)
    if cfg is None:
        raise NanokernError("the model has no .config: pass config= (model_config.json as a dict)")
    if dataclasses.is_dataclass(cfg):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, dict):
        raise NanokernError(f"config must be a dataclass or a dict, not {type(cfg).__name__}")
    cfg = json.loads(json.dumps(cfg, default=str))  # model_config.json as the trainer writes it (tuples as lists)
    prefix = {id(m): f"{n}." for n, m in model.named_modules()}
    prefix[id(model)] = ""
    params: dict[str, LocalParam] = {}
    for name, p in model.named_parameters():
        if not hasattr(p, "is_sharded") or not hasattr(p, "is_tied"):
            raise NanokernError(f"{name} is not a NanotronParameter (no is_sharded / is_tied)")
        if p.is_tied:
            info = p.get_tied_info()
            name = f"{prefix[id(info.root_module)]}{info.name}"
        t = p.detach()
        if not t.is_contiguous():
            raise NanokernError(f"{name}: the local tensor is not contiguous")
        dtypes.of_torch(t.dtype)
        if p.is_sharded:
            info = p.get_sharded_info()
            gshape = tuple(int(x) for x in info.unsharded_shape)
            params.setdefault(name, LocalParam(t, _pairs_of(name, info, t.shape, gshape), gshape))
        else:  # (a tied copy met later, e.g. lm_head under the embedding's name, is the same weights)
            params.setdefault(name, LocalParam(t, None, tuple(t.shape)))
    return RankShards(params, cfg, None)


def as_shards(src) -> RankShards:
    if isinstance(src, RankShards):
        return src
    if hasattr(src, "named_parameters"):
        return from_module(src)
    raise NanokernError(f"src must be what live.load_rank returns or a Nanotron model, not {type(src).__name__}")
