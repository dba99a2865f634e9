"""Units: the source bytes a plan's pieces read, brought to every rank of the grid.

A unit of a TP-sharded parameter is every TP rank's shard, all-gathered over the TP group into
one [tp_size, bytes] buffer on the PP stage that holds it, then broadcast over the PP group to
the other stages. A replicated parameter (norms, router, experts) needs no TP collective: its
unit is the span a piece reads (one expert of an input-major [E, in, out] tensor), broadcast over
PP. Where no collective writes into it, a unit is the rank's own tensor (no copy). Every rank
gathers the same units in the same order (the plan's), each once: when the first tensor that
reads it comes, freed after the last one. `Budget` counts every byte allocated here.
"""

from __future__ import annotations

from nanokern.live.comm import as_bytes
from nanokern.live.layout import parse_ref, unit_of


class Budget:
    """The bytes this module allocates on a rank: now and at the peak."""

    def __init__(self):
        self.now = 0
        self.peak = 0
        self.bound_unit = 0  # the largest unit of the run (set by stream.produce)
        self._sizes: dict[int, int] = {}

    def alloc(self, nbytes: int, device):
        import torch

        t = torch.empty(nbytes, dtype=torch.uint8, device=device)
        self._sizes[id(t)] = nbytes
        self.now += nbytes
        self.peak = max(self.peak, self.now)
        return t

    def free(self, t) -> None:
        self.now -= self._sizes.pop(id(t), 0)


class Units:
    """The units of a list of tensors, gathered collectively as `step(i)` reaches tensor i."""

    def __init__(self, lp, sh, g, order, device, budget: Budget):
        self.lp, self.sh, self.g, self.device, self.budget = lp, sh, g, device, budget
        self.keys: list[list[tuple]] = []
        self.last: dict[tuple, int] = {}
        for i, t in enumerate(order):
            ks = list(dict.fromkeys(self._key(p.ref) for p in t.pieces))
            self.keys.append(ks)
            for k in ks:
                self.last[k] = i
        slots = lambda name: self.g.tp_size if self.lp.params[name].sharded else 1  # noqa: E731
        self.largest = max((slots(k[0]) * k[2] for k in self.last), default=0)  # the largest unit buffer
        self.live: dict[tuple, tuple] = {}  # key -> (view [slots, bytes], its allocation or None)
        self.gathered_bytes = 0

    def _key(self, ref) -> tuple:
        name, _ = parse_ref(ref.path)
        return unit_of(ref, self.lp.params[name])

    def step(self, i: int) -> None:
        for k in self.keys[i]:
            if k not in self.live:
                self.live[k] = self._gather(k)

    def release(self, i: int) -> None:
        for k in self.keys[i]:
            if self.last[k] == i:
                _, base = self.live.pop(k)
                if base is not None:
                    self.budget.free(base)

    def close(self) -> None:
        for _, base in self.live.values():
            if base is not None:
                self.budget.free(base)
        self.live.clear()

    def _gather(self, key: tuple):
        name, off, slot = key
        info, g = self.lp.params[name], self.g
        holds = g.pp == info.owner
        local = as_bytes(self.sh.params[name].tensor)[off : off + slot] if holds else None
        slots = g.tp_size if info.sharded else 1
        self.gathered_bytes += slots * slot
        if local is not None and local.numel() == slot and slots == 1 and local.device == self.device:
            g.broadcast_pp(local, info.owner)  # its own tensor: the broadcast only reads it
            return local.view(1, slot), None
        base = self.budget.alloc(slots * slot, self.device)
        buf = base.view(slots, slot)
        if holds:
            if local.numel() != slot:  # a shorter shard than its siblings': padded
                pad = self.budget.alloc(slot, self.device)
                pad[: local.numel()].copy_(local)
                g.gather_tp(pad, buf)
                self.budget.free(pad)
            else:
                g.gather_tp(local.to(self.device), buf)
        g.broadcast_pp(base, info.owner)
        return buf, base

    def tensor(self, ref):
        """The piece's source as a tensor: a view of its unit."""
        name, tp = parse_ref(ref.path)
        info = self.lp.params[name]
        key = unit_of(ref, info)
        buf, _ = self.live[key]
        start = 0 if info.sharded else ref.offset - key[1]
        raw = buf[tp if info.sharded else 0, start : start + ref.nbytes]
        return raw.view(ref.dtype.torch).view(ref.shape)

    def array(self, ref):
        """The same as numpy (host path of execute/fill.py; CPU units only)."""
        name, tp = parse_ref(ref.path)
        info = self.lp.params[name]
        key = unit_of(ref, info)
        buf, _ = self.live[key]
        start = 0 if info.sharded else ref.offset - key[1]
        raw = buf[tp if info.sharded else 0, start : start + ref.nbytes].numpy()
        return raw.view(ref.dtype.np).reshape(ref.shape)
