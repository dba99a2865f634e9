"""The torchrun side of tests/test_live_vllm.py (gloo, CPU): live.vllm_source on every case it is
given, checked with vLLM's own classes and checks (vLLM imported from the folder the test made).

Per case (a Nanotron checkpoint, its TP x PP, an export of it by `nanokern convert`): each rank's
shards from live.load_rank; the source is an instance of vLLM's WeightSource, with both modes;
its metadata are vLLM ParamMeta (validated by ParamMeta itself), identical on every rank, the
export's names, dtypes and shapes in its order, group-contiguous by vLLM's layerwise_groups,
each owned by the TP group of the stage holding its layer; iter_full passes vLLM's sender check
(NCCL backend's _checked_iter) and equals the export; iter_local yields the shapes vLLM's nccl_m2n
computes from the placements (expected_local_shape), and its chunks, concatenated by the
placements (in owner order, as torch.chunk splits), equal the export. Failures are printed one per
line ("FAIL ..."); exit 1 if any. No test functions here.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from test_live_worker import check, reference, run_cases, same

from nanokern import live

# The dim a plain chunk of what the TP ranks hold splits (TP > 1), by HF name: Nanotron shards
# q/k/v and gate/up by output rows, o/down by input columns; what every TP rank holds whole
# (norms, router, experts) is cut along dim 0, or dim 1 where dim 0 does not divide (the
# shared-expert gate, [1, hidden]). The vocab is a chunk unless trimmed below the padded size.
DIMS = [(r"self_attn\.[qkv]_proj\.(weight|bias)$", 0), (r"self_attn\.o_proj\.weight$", 1),
        (r"mlp\.(shared_expert\.)?(gate|up)_proj\.weight$", 0), (r"mlp\.(shared_expert\.)?down_proj\.weight$", 1),
        (r"mlp\.experts\.\d+\.(gate|up|down)_proj\.weight$", 0), (r"layernorm\.weight$|^model\.norm\.weight$", 0),
        (r"mlp\.gate\.weight$", 0), (r"mlp\.shared_expert_gate\.weight$", 1),
        (r"^model\.embed_tokens\.weight$|^lm_head\.weight$", 0)]


def want_dim(name: str, tp: int, trimmed: bool, fp8_shape: tuple | None = None):
    """fp8_shape: the export holds the tensor as an FP8 weight of that shape (or its scales): a
    chunk must hold whole 128 x 128 blocks, along its dim (an expert, held whole by every rank:
    dim 0, else 1), else it is replicated."""
    if tp == 1 or (trimmed and re.search(r"embed_tokens|lm_head", name)):
        return None
    dim = next(d for pat, d in DIMS if re.search(pat, name.replace("_scale_inv", "")))
    if fp8_shape is None:
        return dim
    return next((d for d in ((0, 1) if ".experts." in name else (dim,)) if fp8_shape[d] % (tp * 128) == 0), None)


def grid_gather(obj, tp: int, pp: int, tpg, ppg) -> list:
    """[obj of each rank of the TP x PP grid] (over its TP, then its PP group)."""
    row = [None] * tp
    dist.all_gather_object(row, obj, group=tpg)
    rows = [None] * pp
    dist.all_gather_object(rows, row, group=ppg)
    return [x for r in rows for x in r]


def stage_ranks(sh, tp: int, pp: int, tpg, ppg) -> dict:
    """{Nanotron name: the global ranks of the TP group of the lowest stage holding it}, from
    every rank's parameter names (load_rank's, not the code under test)."""
    mine = (sorted(sh.params), dist.get_rank() // tp, tuple(dist.get_process_group_ranks(tpg)))
    out: dict[str, tuple] = {}
    for names, stage, ranks in sorted(grid_gather(mine, tp, pp, tpg, ppg), key=lambda r: r[1]):
        for n in names:
            out.setdefault(n, ranks)
    return out


def nanotron_of(hf: str, held: dict) -> str:
    m = re.match(r"model\.layers\.(\d+)\.", hf)
    if m:
        return next(n for n in held if n.startswith(f"model.decoder.{m.group(1)}."))
    key = {"model.embed_tokens.weight": "token_embedding", "model.norm.weight": "final_layer_norm",
           "lm_head.weight": "lm_head"}[hf]
    return next(n for n in held if key in n)


def run_case(case: dict, tpg, ppg, vllm) -> None:
    base, engine, m2n = vllm
    fx, tp, pp, dtype = case["fixture"], case["tp"], case["pp"], case["dtype"]
    rank = dist.get_rank()
    what = f"{Path(fx).name} tp{tp} pp{pp} {dtype}"
    sh = live.load_rank(fx, rank % tp, rank // tp)
    opts = {k: case[k] for k in ("vocab_size", "rope_interleaved", "fp8_scale") if k in case}
    want = reference(case["ref"])
    src = live.vllm_source(sh, tp_group=tpg, pp_group=ppg, dtype=dtype, **opts)
    check(isinstance(src, base.WeightSource) and src.implements_iter_full() and src.implements_iter_local(),
          f"{what}: not a vLLM WeightSource with both modes")
    meta = src.metadata
    check(meta is src.metadata and all(type(m) is base.ParamMeta for m in meta),
          f"{what}: metadata is not a cached list of ParamMeta")
    check(len(set(grid_gather(repr(meta), tp, pp, tpg, ppg))) == 1, f"{what}: metadata differs across ranks")
    hf_meta = live.hf_metadata(sh, tpg, ppg, dtype, **opts)
    check(dtype != "fp8" or any(m.dtype == torch.float8_e4m3fn for m in meta), f"{what}: nothing quantized")
    check([(m.name, m.dtype, m.shape) for m in meta] == [(n, dt, tuple(s)) for n, s, dt in hf_meta],
          f"{what}: metadata is not hf_metadata's names, dtypes and shapes in its order")
    names = [m.name for m in meta]
    check([n for g in base.layerwise_groups(names) for n in g] == names, f"{what}: metadata order is not group-contiguous")
    held = stage_ranks(sh, tp, pp, tpg, ppg)
    trimmed = "vocab_size" in case
    shard_names = []
    for m in meta:
        ranks = held[nanotron_of(m.name, held)]
        check(m.owners == ranks, f"{what}: {m.name} owned by {m.owners}, not the TP group {ranks} of its stage")
        weight = want.get(m.name.replace("_scale_inv", ""))
        dim = want_dim(m.name, tp, trimmed, tuple(weight.shape) if weight.dtype == torch.float8_e4m3fn else None)
        got = None if m.placements is None else m.placements[0].dim
        check(got == dim and (m.placements is None or m.placements == (base.Shard(dim),)),
              f"{what}: {m.name} placements {m.placements}, want {'replicated' if dim is None else f'Shard({dim})'}")
        if got is not None:
            shard_names.append(m.name)
    owned = [m for m in meta if rank in m.owners]
    check([m.name for m in owned] == src.owned_names(rank), f"{what}: owned_names disagrees with the owners")
    full = list(engine.NCCLTrainerWeightTransferEngine._checked_iter(src, owned))  # vLLM's sender check
    check([n for n, _ in full] == src.owned_names(rank), f"{what}: iter_full yields {len(full)} of {len(owned)} owned names")
    for n, t in full:
        check(same(t, want[n]), f"{what}: iter_full {n} differs from the convert export")
    local = {}
    for i, (n, t) in enumerate(src.iter_local()):
        m = owned[i] if i < len(owned) else None
        check(m is not None and n == m.name, f"{what}: iter_local yields {n} at {i}, not {m and m.name}")
        if m is None:
            break
        # nccl_m2n's source plan: its owner check on the real metadata with one stage (owners =
        # every trainer rank); with several stages, over the stage's TP group as its own world
        mm = m2n.m2n_param_meta(m if pp == 1 else base.ParamMeta(m.name, m.dtype, m.shape, owners=tuple(range(tp)),
                                                                 placements=m.placements), tp)
        m2n.check_transferable(mm.name, mm.dtype, mm.shape)
        check(t.dtype == m.dtype and tuple(t.shape) == m2n.expected_local_shape(mm),
              f"{what}: iter_local {n} is {t.dtype} {tuple(t.shape)}, vLLM expects {m2n.expected_local_shape(mm)}")
        d = None if m.placements is None else m.placements[0].dim
        piece = want[n] if d is None else torch.chunk(want[n], tp, d)[m.owners.index(rank)].contiguous()
        check(same(t, piece), f"{what}: iter_local {n} is not its {'whole tensor' if d is None else f'chunk along {d}'}")
        if d is not None:  # (what the receiver reassembles)
            local[n] = t.clone().view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t.clone()  # (pickles)
    everyone = [None] * tp
    dist.all_gather_object(everyone, local, group=tpg)
    for m in owned:  # the receiver's reassembly: chunks in owner (mesh) order, concatenated along the dim
        if m.placements is not None:
            whole = torch.cat([everyone[k][m.name].view(m.dtype) for k in range(tp)], dim=m.placements[0].dim)
            check(same(whole, want[m.name]), f"{what}: iter_local chunks of {m.name} reassembled differ from the export")
    if case.get("change"):  # a fresh pass reads the shards as they are now
        for p in sh.params.values():
            p.tensor.mul_(2)
        for n, t in src.iter_local():
            d = dict(zip([m.name for m in owned], owned))[n]
            ref = (want[n].float() * 2).to(want[n].dtype)  # (exact: a power of two; not for FP8 scales)
            ref = ref if d.placements is None else torch.chunk(ref, tp, d.placements[0].dim)[d.owners.index(rank)].contiguous()
            check(same(t, ref), f"{what}: iter_local {n} after the shards changed: stale or wrong")
    if case.get("stop"):  # TP rank 0 of each stage stops after one tensor: its TP group stops too, at once
        if rank % tp == 0:
            it = src.iter_full()
            next(it)
            it.close()
        else:
            try:
                for _ in src.iter_full():
                    pass
                check(False, f"{what}: iter_full went on after TP rank 0 of its stage stopped")
            except live.NanokernError as e:
                check("stopped iterating" in str(e), f"{what}: the others' error does not say a rank stopped: {e}")
        check([n for n, _ in src.iter_full()] == src.owned_names(rank), f"{what}: the next pass after a stop is not whole")
    if rank == 0:
        print(f"LAYOUT {what}: shard {len(shard_names)} / {len(meta)}: "
              f"{json.dumps(src.layout.kinds())}", flush=True)


def main() -> None:
    dist.init_process_group("gloo")
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.path.append(spec["vllm_path"])  # vLLM and what it needs beyond .venv's packages (after them)
    from vllm.distributed.weight_transfer import base, m2n_common, nccl_engine

    run_cases(spec["cases"], lambda i, case, tpg, ppg: run_case(case, tpg, ppg, (base, nccl_engine, m2n_common)), "vllm")

if __name__ == "__main__":
    main()
