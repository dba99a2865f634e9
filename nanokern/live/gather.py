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
    """The units of a list of tensors, gathered as `step(i)` reaches tensor i. dest(t): the grid
    index of the one rank that needs tensor t, or None when every rank does. A unit for every
    rank is all-gathered over TP and broadcast over PP; a unit for one rank is gathered over TP
    to that rank's TP position and sent on to its PP stage only (the other ranks move nothing)."""

    def __init__(self, lp, sh, g, order, device, budget: Budget, dest=None):
        self.lp, self.sh, self.g, self.device, self.budget = lp, sh, g, device, budget
        self.keys: list[list[tuple]] = []
        self.dests: list[int | None] = []
        self.last: dict[tuple, int] = {}
        self.cur = None  # the destination of the tensor being filled
        for i, t in enumerate(order):
            d = None if dest is None else dest(t)
            self.dests.append(d)
            ks = list(dict.fromkeys((*self._key(p.ref), d) for p in t.pieces))
            self.keys.append(ks)
            for k in ks:
                self.last[k] = i
        slots = lambda name: self.g.tp_size if self.lp.params[name].sharded else 1  # noqa: E731
        self.largest = max((slots(k[0]) * k[2] for k in self.last), default=0)  # the largest unit buffer
        self.live: dict[tuple, tuple] = {}  # key -> (view [slots, bytes] or None, its allocation or None)

    def _key(self, ref) -> tuple:
        name, _ = parse_ref(ref.path)
        return unit_of(ref, self.lp.params[name])

    def step(self, i: int) -> None:
        self.cur = self.dests[i]
        if any(k not in self.live for k in self.keys[i]):
            self.g.sync()  # every rank is here, none stopped: the collectives can start
        for k in self.keys[i]:
            if k not in self.live:
                self.live[k] = self._gather(*k[:3]) if k[3] is None else self._deliver(*k)

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

    def _local(self, name: str, off: int, slot: int):
        return as_bytes(self.sh.params[name].tensor)[off : off + slot]

    def _gather(self, name: str, off: int, slot: int):
        """Every rank gets the unit."""
        info, g = self.lp.params[name], self.g
        holds = g.pp == info.owner
        local = self._local(name, off, slot) if holds else None
        slots = g.tp_size if info.sharded else 1
        if local is not None and local.numel() == slot and slots == 1 and local.device == self.device:
            g.broadcast_pp(local, info.owner)  # its own tensor: the broadcast only reads it
            return local.view(1, slot), None
        base = self.budget.alloc(slots * slot, self.device)
        buf = base.view(slots, slot)
        if holds and slots == 1:
            buf[0].copy_(local)
        elif holds:
            src, pad = self._padded(local, slot)
            g.gather_tp(src, buf)
            self._free(pad)
        g.broadcast_pp(base, info.owner)
        return buf, base

    def _deliver(self, name: str, off: int, slot: int, d: int):
        """Only grid rank d gets the unit: gathered over TP to d's TP position on the stage that
        holds it, then sent to d's stage. Ranks with no part return (None, None)."""
        info, g = self.lp.params[name], self.g
        dpp, dtp = divmod(d, g.tp_size)
        slots = g.tp_size if info.sharded else 1
        buf = base = None
        if g.pp == info.owner and (info.sharded and g.tp_size > 1 or g.tp == dtp):
            local = self._local(name, off, slot)
            if slots == 1 and local.numel() == slot and local.device == self.device:
                buf = local.view(1, slot)
            elif slots == 1:
                base = self.budget.alloc(slot, self.device)
                buf = base.view(1, slot)
                buf[0].copy_(local)
            else:
                if g.tp == dtp:
                    base = self.budget.alloc(slots * slot, self.device)
                    buf = base.view(slots, slot)
                src, pad = self._padded(local, slot)
                g.gather_tp_to(src, buf, dtp)
                self._free(pad)
            if dpp != g.pp and g.tp == dtp:
                g.send_pp(buf.view(-1), dpp)
                self._free(base)
                return None, None
        elif g.pp == dpp and g.tp == dtp:
            base = self.budget.alloc(slots * slot, self.device)
            buf = base.view(slots, slot)
            g.recv_pp(base, info.owner)
        return (buf, base) if g.index == d else (None, None)

    def _padded(self, local, slot: int):
        """(source, its allocation): a shard shorter than its siblings' padded to the slot."""
        if local.numel() == slot and local.device == self.device:
            return local, None
        pad = self.budget.alloc(slot, self.device)
        pad[: local.numel()].copy_(local)
        return pad, pad

    def _free(self, base) -> None:
        if base is not None:
            self.budget.free(base)

    def _raw(self, ref):
        name, tp = parse_ref(ref.path)
        info = self.lp.params[name]
        key = (*unit_of(ref, info), self.cur)
        buf, _ = self.live[key]
        start = 0 if info.sharded else ref.offset - key[1]
        return buf[tp if info.sharded else 0, start : start + ref.nbytes]

    def tensor(self, ref):
        """The piece's source as a tensor: a view of its unit."""
        return self._raw(ref).view(ref.dtype.torch).view(ref.shape)

    def array(self, ref):
        """The same as numpy (host path of execute/fill.py; CPU units only)."""
        return self._raw(ref).numpy().view(ref.dtype.np).reshape(ref.shape)
