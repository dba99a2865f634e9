"""Nanotron's naming and placement rules, shared by the reader and the writer.

File names (with the 2024 "bad naming" variant and the `_exp-rank` suffix), parameter paths,
and the cost-based pipeline-stage split of `build_model`.
"""

from __future__ import annotations

import re

from nanokern.arch import decoder
from nanokern.arch.spec import ModelSpec

EMBED_NT = decoder.EMBED.nt
FINAL_NORM_NT = decoder.FINAL_NORM.nt
LM_HEAD_NT = decoder.LM_HEAD.nt

_FILE = re.compile(
    r"^model_(?:model_)?(?P<kind>[a-z][a-z0-9_]*?)(?:\.safetensors)?"
    r"(?:_pp-rank-(?P<pp>\d+)-of-(?P<pps>\d+)_tp-rank-(?P<tp>\d+)-of-(?P<tps>\d+))?"
    r"(?:_exp-rank-(?P<ep>\d+)-of-(?P<eps>\d+))?\.safetensors$"
)
_LAYER = re.compile(r"^model\.decoder\.(\d+)\.pp_block\.(.+)$")


def parse_file_name(name: str) -> dict | None:
    """{'kind' (the parameter's last name part: weight, bias, merged_gate_up_proj, ...), 'pp',
    'pp_size', 'tp', 'tp_size', 'sharded', 'bad_naming', 'ep', 'ep_size'} or None if not a weight file."""
    m = _FILE.match(name)
    if not m:
        return None
    sharded = m.group("pp") is not None
    return {
        "ep": int(m.group("ep")) if m.group("ep") else None,
        "ep_size": int(m.group("eps")) if m.group("eps") else None,
        "kind": m.group("kind"),
        "sharded": sharded,
        "pp": int(m.group("pp")) if sharded else None,
        "pp_size": int(m.group("pps")) if sharded else None,
        "tp": int(m.group("tp")) if sharded else None,
        "tp_size": int(m.group("tps")) if sharded else None,
        "bad_naming": name.startswith("model_model_"),
    }


def param_path(param: str, pp: int | None = None, pp_size: int | None = None, tp: int | None = None, tp_size: int | None = None) -> str:
    """Relative file path of a parameter (shard) under the step folder, as Nanotron writes it."""
    parts = param.split(".")
    suffix = "" if pp is None else f"_pp-rank-{pp}-of-{pp_size}_tp-rank-{tp}-of-{tp_size}"
    return "/".join(["model", *parts[:-1], f"model_{parts[-1]}{suffix}.safetensors"])


def layer_of(param: str) -> tuple[int, str] | None:
    m = _LAYER.match(param)
    return (int(m.group(1)), m.group(2)) if m else None


def pp_stage_blocks(spec: ModelSpec, vocab: int, pp: int) -> dict[str, int]:
    """Which PP rank owns each PipelineBlock, by Nanotron's cost-based split (build_model).

    Blocks in order: embedding, decoder 0..L-1, final norm, lm_head (then parameter-free
    blocks). Costs: decoder `decoder.layer_cost` (4*nq*d*H + 3*I*H), lm_head V*H (padded V),
    others 0. A block is assigned to the current rank, and the rank advances after the block
    whose cumulative cost crosses total*(k+1)/P.
    """
    blocks = [("embedding", 0)]
    blocks += [(f"decoder.{i}", decoder.layer_cost(spec)) for i in range(spec.num_hidden_layers)]
    blocks += [("final_norm", 0), ("lm_head", vocab * spec.hidden_size), ("cast_to_fp32", 0), ("loss", 0)]
    total = sum(c for _, c in blocks)
    thresholds = [total * ((k + 1) / pp) for k in range(pp)]
    owner: dict[str, int] = {}
    k, cum = 0, 0
    for name, cost in blocks:
        owner[name] = k
        cum += cost
        if k < pp - 1 and cum > thresholds[k]:
            k += 1
    return owner


def block_of(param: str) -> str:
    if param == EMBED_NT:
        return "embedding"
    if param == FINAL_NORM_NT:
        return "final_norm"
    if param == LM_HEAD_NT:
        return "lm_head"
    lp = layer_of(param)
    if lp is None:
        raise ValueError(f"not a Nanotron decoder parameter: {param}")
    return f"decoder.{lp[0]}"
