"""hf_weights and hf_metadata: the HF tensors of a running job, collective over its TP x PP ranks."""

from __future__ import annotations

from dataclasses import dataclass

from nanokern.errors import NanokernError
from nanokern.live.comm import Grid, grid, start_call
from nanokern.live.gather import Budget
from nanokern.live.guard import watching
from nanokern.live.layout import LivePlan, live_plan
from nanokern.live.pool import Recycler
from nanokern.live.source import RankShards, as_shards
from nanokern.live.stream import produce


@dataclass
class Setup:
    sh: RankShards
    g: Grid
    lp: LivePlan
    device: object
    backend: str


def setup(src, tp_group=None, pp_group=None, parallel_context=None, dtype="bf16", vocab_size=None, max_shard_size="5GB",
          tokenizer=None, rope_interleaved=None, hf_arch=None, backend="auto", *, call=("hf_metadata", ()),
          timeout: float = 60.0, step_timeout: float | None = 60.0, fp8_scale: str = "float") -> Setup:
    """Collective: the start handshake (call: (function name, its collective-shaping arguments);
    comm.start_call), every rank's metadata, then the plan (identical on every rank)."""
    import torch

    from nanokern.ops import resolve_backend

    positive = lambda x: isinstance(x, (int, float)) and not isinstance(x, bool) and x > 0  # noqa: E731
    for x in (timeout, step_timeout):
        if not positive(x) and not (x is None and step_timeout is None and positive(timeout)):
            raise NanokernError(f"timeout must be a positive number of seconds (or None), not {x!r}")
    g = grid(tp_group, pp_group, parallel_context)
    fn, extra = call
    start_call(g, fn, (("dtype", dtype), ("vocab_size", vocab_size), ("max_shard_size", max_shard_size),
                       ("rope_interleaved", rope_interleaved), ("hf_arch", hf_arch), ("fp8_scale", fp8_scale), *extra),
               timeout, step_timeout)
    with watching(g.guard):
        sh = as_shards(src)
        devices = {p.tensor.device for p in sh.params.values()}
        if len(devices) > 1:
            raise NanokernError(f"the shards are on several devices ({', '.join(map(str, sorted(devices, key=str)))})")
        device = devices.pop() if devices else torch.device("cpu")
        lp = live_plan(sh, g, dtype, vocab_size, max_shard_size, tokenizer, rope_interleaved, hf_arch, fp8_scale)
        return Setup(sh, g, lp, device, resolve_backend(backend, device))


def state_dict_order(lp: LivePlan) -> list:
    """The plan's OutTensors in the HF class's state_dict order (the files hold them by name), an
    FP8 weight's weight_scale_inv right after it (as in the files)."""
    by_name = {t.name: t for f in lp.plan.files for t in f.tensors}
    scales = {t.scale_of: t for t in by_name.values() if t.quant == "scale_inv"}
    names = [n for n, *_ in lp.model.family.hf_tensors(lp.model.spec, lp.plan.summary["vocab_size"])]
    return [t for n in names for t in (by_name[n], scales.get(n)) if t is not None]


def _wanted(ranks, g: Grid):
    """(wanted, dest) for produce: every rank, or the one global rank `ranks`."""
    if ranks == "all":
        return (lambda t: True), None
    members = g.all_gather_object(g.rank)
    if not isinstance(ranks, int) or ranks not in members:
        raise NanokernError(f"ranks must be 'all' or a global rank of the TP x PP grid {members}, not {ranks!r}")
    d = members.index(ranks)
    return (lambda t: g.index == d), (lambda t: d)


def fill_stats(stats: dict | None, budget: Budget, order, wanted, nbuf: int, gathered: int = 0) -> None:
    if stats is None:
        return
    largest = max((t.nbytes for t in order if wanted(t)), default=0)
    stats.update(peak_bytes=budget.peak, largest_tensor_bytes=largest, largest_unit_bytes=budget.bound_unit,
                 bound_bytes=2 * largest + budget.bound_unit, out_buffers=nbuf)


def hf_weights(src, tp_group=None, pp_group=None, dtype: str = "bf16", *, parallel_context=None, ranks="all",
               vocab_size: int | None = None, backend: str = "auto", rope_interleaved: bool | None = None,
               hf_arch: str | None = None, reuse_buffer: bool = False, timeout: float | None = 60.0, stats: dict | None = None,
               fp8_scale: str = "float"):
    """Yield (HF name, tensor) for every tensor `nanokern convert --to hf` would write from the
    saved checkpoint, in the HF class's state_dict order, with the same bytes. Collective: every
    rank of the TP x PP grid iterates it to the end, in the same order.

    src: what `load_rank` returns, or a Nanotron model (NanotronParameters; `model.config`).
    dtype "fp8": the `--dtype fp8` export (plan/fp8.py): each quantizable Linear weight as
    float8_e4m3fn, then its float32 `weight_scale_inv` (fp8_scale "ue8m0": powers of two), the
    rest bf16; quantized by the fused gather-quantize kernel straight from the gathered shards.
    tp_group / pp_group (or parallel_context= with tp_pg and pp_pg): the job's groups.
    ranks: "all" (every rank yields every tensor) or one global rank (only it yields; the others
    take part in the collectives and yield nothing; each unit travels to that rank only). Tensors
    are gathered and cast on the shards' device.

    A yielded tensor is the consumer's: it stays valid for as long as anything references it (a
    list, a dict, a packer, a queue). Its buffer is filled again, for a later tensor of the same
    size, only once nothing references it. Memory per rank for a consumer that drops each tensor
    before asking for the next but one (a plain for loop): at most 3 x the largest HF tensor in
    the output dtype (the tensor the loop variable still names, the one being filled, and
    dropped buffers kept for tensors of their size still to come: pool.py) plus the gathered
    units; what the consumer keeps adds its own size. reuse_buffer=True: no allocation after the
    first, but each tensor is a VIEW OF ONE REUSED BUFFER, valid only until the next step of the
    iterator (clone it to keep it).
    stats= (a dict) receives peak_bytes (every output buffer alive at once, the ones the consumer
    still held included, plus the units), bound_bytes, and allocations (output buffers made).

    No rank hangs: the ranks shake hands at the start (every rank of the grid within `timeout`
    seconds, the same function and arguments, else NanokernError), and meet before each
    collective step. A rank whose loop stops early (a break, or its consumer raised: the
    generator is closed) or that fails makes every other rank raise NanokernError naming it,
    within milliseconds; the process groups stay usable (no collective is left half done).
    A rank that waits longer than `timeout` for the others between steps (one rank's consumer
    is that slow, or holds its iterator without closing it) raises, and so do the others.
    timeout=None: no limit between steps but the process group's (60 s still bounds the start).
    A consumer that hands the iterator on (a packer) and fails stops the others when the
    iterator is closed or collected: wrap it in contextlib.closing to make that immediate.
    """
    s = setup(src, tp_group, pp_group, parallel_context, dtype, vocab_size, "5GB", None, rope_interleaved, hf_arch, backend,
              call=("hf_weights", (("ranks", ranks),)), timeout=60.0 if timeout is None else timeout,
              step_timeout=timeout, fp8_scale=fp8_scale)
    with watching(s.g.guard):
        yield from _weights(s, ranks, reuse_buffer, stats)


def _weights(s: Setup, ranks, reuse_buffer: bool, stats):
    order = state_dict_order(s.lp)
    wanted, dest = _wanted(ranks, s.g)
    budget = Budget()
    pool = None if reuse_buffer else Recycler(budget, s.device, [t.nbytes for t in order if wanted(t)])
    place = None if pool is None else (lambda t: pool.take(t.nbytes))
    try:
        for t, out in produce(s.lp, s.sh, s.g, order, wanted, s.backend, s.device, budget, nbuf=1, dest=dest, place=place):
            yield t.name, out.view(t.shape)
            del out  # (the consumer's reference alone keeps the buffer from the pool: pool.py)
    finally:
        if pool is not None:
            pool.close()
        fill_stats(stats, budget, order, wanted, 1)
        if stats is not None:
            stats["allocations"] = 1 if pool is None else pool.allocations
            if pool is not None:  # two in flight (the consumer's loop variable, the one filled), spares
                stats["bound_bytes"] = 3 * stats["largest_tensor_bytes"] + stats["largest_unit_bytes"]


def hf_metadata(src, tp_group=None, pp_group=None, dtype: str = "bf16", *, parallel_context=None,
                vocab_size: int | None = None, rope_interleaved: bool | None = None, hf_arch: str | None = None,
                timeout: float = 60.0, fp8_scale: str = "float") -> list:
    """[(HF name, shape, torch dtype)]: exactly what hf_weights yields (on a rank that yields), in
    its order. Collective (metadata objects only: no tensor is communicated); every rank within
    `timeout` seconds, else NanokernError."""
    s = setup(src, tp_group, pp_group, parallel_context, dtype, vocab_size, "5GB", None, rope_interleaved, hf_arch,
              call=("hf_metadata", ()), timeout=timeout, step_timeout=timeout, fp8_scale=fp8_scale)
    return [(t.name, tuple(t.shape), t.dtype.torch) for t in state_dict_order(s.lp)]
