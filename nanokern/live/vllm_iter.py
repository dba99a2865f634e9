"""The two passes of the vLLM WeightSource over one PP stage: every collective runs among the
TP group of the stage that owns the tensors (the stage's own handshake, barriers and abort:
guard.py), so each stage sends its own layers and no byte crosses PP.

iter_full: the stage's HF tensors whole, by the export's own machinery (stream.produce over a
grid of the stage alone: shards all-gathered over TP, cast by the gather-cast kernel).
iter_local: a SHARD tensor's chunk built by the gather-cast kernel (an FP8 one by the
gather-quantize kernel, its scales with it) from the rank's own memory (no collective); a LOCAL
one whole from the rank's own copy; a GATHER one whole, as iter_full.
Yielded tensors are the consumer's, as hf_weights' are (pool.py).
"""

from __future__ import annotations

import dataclasses

from nanokern.live.comm import Grid, as_bytes, start_call
from nanokern.live.gather import Budget
from nanokern.live.guard import watching
from nanokern.live.layout import LivePlan, parse_ref
from nanokern.live.pool import Recycler
from nanokern.live.stream import fill, fill_quantized, out_view, produce
from nanokern.live.vllm_plan import GATHER, Placed, local_tensor


class Own:
    """This rank's own memory as the plan's sources (views, no copy; read at each call)."""

    def __init__(self, sh):
        self.sh = sh

    def _raw(self, ref):
        name, _ = parse_ref(ref.path)
        return as_bytes(self.sh.params[name].tensor)[ref.offset : ref.offset + ref.nbytes]

    def tensor(self, ref):
        return self._raw(ref).view(ref.dtype.torch).view(ref.shape)

    def array(self, ref):
        return self._raw(ref).numpy().view(ref.dtype.np).reshape(ref.shape)


def stage_plan(lp: LivePlan) -> LivePlan:
    """The plan as a grid of one stage sees it: each parameter's holder is that stage (PP 0)."""
    return LivePlan(lp.plan, {n: dataclasses.replace(i, owner=0) for n, i in lp.params.items()}, lp.model)


def stage_grid(g: Grid, fn: str, timeout: float | None) -> Grid:
    """This rank's TP group alone as a grid, with its own start handshake and guard."""
    sg = Grid(g.tp_group, None, g.tp, 0, g.tp_size, 1, g.rank)
    start_call(sg, fn, (), 60.0 if timeout is None else timeout, timeout)
    return sg


def _whole(s, lp: LivePlan, sg: Grid, order: list, take):
    """The tensors of `order` whole, gathered over the stage's TP group."""
    budget = Budget()
    return produce(lp, s.sh, sg, order, lambda t: True, s.backend, s.device, budget, place=lambda t: take(t.nbytes))


def full_pass(s, lp: LivePlan, mine: list[Placed], timeout: float | None):
    """(name, whole tensor) for each of this stage's tensors, in order. Collective over the TP group."""
    sg = stage_grid(s.g, "vllm_source.iter_full", timeout)
    order = [p.t for p in mine]
    pool = Recycler(Budget(), s.device, [t.nbytes for t in order])
    with watching(sg.guard):
        try:
            for t, out in _whole(s, lp, sg, order, pool.take):
                yield t.name, out.view(t.shape)
                del out
        finally:
            pool.close()


def local_pass(s, lp: LivePlan, mine: list[Placed], timeout: float | None):
    """(name, this rank's piece) for each of this stage's tensors, in order: its chunk (SHARD),
    or the whole tensor (LOCAL, GATHER). Collective over the TP group for GATHER tensors only."""
    sg = stage_grid(s.g, "vllm_source.iter_local", timeout)
    tp, r = s.g.tp_size, s.g.tp
    local = {id(p): local_tensor(p, r, tp, s.lp.params) for p in mine if p.kind != GATHER}
    pool = Recycler(Budget(), s.device, [(p.t if p.kind == GATHER else local[id(p)]).nbytes for p in mine])
    whole = _whole(s, lp, sg, [p.t for p in mine if p.kind == GATHER], pool.take)
    own, pending = Own(s.sh), {}  # (an FP8 weight's scales, until its scale_inv tensor)
    with watching(sg.guard):
        try:
            for p in mine:
                if p.kind == GATHER:
                    t, out = next(whole)
                else:
                    t = local[id(p)]
                    out = out_view(pool.take(t.nbytes), t)
                    if t.quant is None:
                        fill(t, out, own, s.backend)
                    else:
                        fill_quantized(t, out, own, s.backend, pending)
                yield t.name, out.view(t.shape)
                del out
        finally:
            whole.close()
            pool.close()
