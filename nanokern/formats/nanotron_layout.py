"""Nanotron's naming and placement rules, shared by the reader and the writer.

Parameter names, file names (with the 2024 "bad naming" variant), the HF <-> Nanotron name
map, and the cost-based pipeline-stage split of `build_model`.
"""

from __future__ import annotations

import re

EMBED_NT = "model.token_position_embeddings.pp_block.token_embedding.weight"
FINAL_NORM_NT = "model.final_layer_norm.pp_block.weight"
LM_HEAD_NT = "model.lm_head.pp_block.weight"
LAYER_PARAMS = ("input_layernorm", "attn.qkv_proj", "attn.o_proj", "post_attention_layernorm", "mlp.gate_up_proj", "mlp.down_proj")

_FILE = re.compile(
    r"^model_(?:model_)?(?P<kind>weight|bias)(?:\.safetensors)?"
    r"(?:_pp-rank-(?P<pp>\d+)-of-(?P<pps>\d+)_tp-rank-(?P<tp>\d+)-of-(?P<tps>\d+))?\.safetensors$"
)
_LAYER = re.compile(r"^model\.decoder\.(\d+)\.pp_block\.(.+)\.weight$")


def layer_param(i: int, what: str) -> str:
    return f"model.decoder.{i}.pp_block.{what}.weight"


def parse_file_name(name: str) -> dict | None:
    """{'kind', 'pp', 'pp_size', 'tp', 'tp_size', 'sharded', 'bad_naming'} or None if not a weight file."""
    m = _FILE.match(name)
    if not m:
        return None
    sharded = m.group("pp") is not None
    return {
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


def pp_stage_blocks(num_layers: int, hidden: int, intermediate: int, num_heads: int, head_dim: int, vocab: int, pp: int) -> dict[str, int]:
    """Which PP rank owns each PipelineBlock, by Nanotron's cost-based split (build_model).

    Blocks in order: embedding, decoder 0..L-1, final norm, lm_head (then parameter-free
    blocks). Costs: decoder 4*nq*d*H + 3*I*H, lm_head V*H, others 0. A block is assigned to the
    current rank, and the rank advances after the block whose cumulative cost crosses
    total*(k+1)/P.
    """
    blocks = [("embedding", 0)]
    blocks += [(f"decoder.{i}", 4 * num_heads * head_dim * hidden + 3 * intermediate * hidden) for i in range(num_layers)]
    blocks += [("final_norm", 0), ("lm_head", vocab * hidden), ("cast_to_fp32", 0), ("loss", 0)]
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
        raise ValueError(f"not a LLaMA parameter: {param}")
    return f"decoder.{lp[0]}"
