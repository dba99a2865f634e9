"""The job's TP x PP grid as torch.distributed sees it: this rank's place in it, small objects
gathered over the whole grid (through the TP group, then the PP group: no world group needed,
so a job with data parallelism calls it on one replica), and the two tensor collectives a live
export runs: an all-gather of a parameter's shards over TP and a broadcast from the PP rank
that holds it. Collectives move bytes (uint8 views), so every dtype travels over gloo and NCCL.
"""

from __future__ import annotations

from dataclasses import dataclass

from nanokern.live import guard as _guard


@dataclass
class Grid:
    tp_group: object
    pp_group: object
    tp: int  # this rank's TP rank
    pp: int  # this rank's PP rank
    tp_size: int
    pp_size: int
    rank: int  # global rank (0 without torch.distributed)
    guard: object = None  # the current call's side channel (guard.py); None: a grid of one, or no store

    def sync(self) -> None:
        """Before a collective: wait for every rank of the grid (raise if one stopped or failed)."""
        if self.guard is not None:
            self.guard.sync()

    @property
    def index(self) -> int:
        """Place in the grid, TP fastest (Nanotron's layout): 0 .. tp_size * pp_size - 1."""
        return self.pp * self.tp_size + self.tp

    def all_gather_object(self, obj) -> list:
        """[object of grid index 0, 1, ...] on every rank of the grid."""
        import torch.distributed as dist

        self.sync()
        row = [obj]
        if self.tp_size > 1:
            row = [None] * self.tp_size
            dist.all_gather_object(row, obj, group=self.tp_group)
        rows = [row]
        if self.pp_size > 1:
            rows = [None] * self.pp_size
            dist.all_gather_object(rows, row, group=self.pp_group)
        return [x for r in rows for x in r]

    def barrier(self) -> None:
        self.all_gather_object(None)

    def _run(self, call, buf, *args, **kw) -> None:
        """call(*args, **kw), a tensor collective. On the host with a guard it is started
        asynchronously and waited for in slices, so a rank that fails while the others are inside
        it (or a Ctrl-C) stops them too (guard.Guard.wait_work); on a GPU it is queued as usual."""
        if self.guard is None or buf.device.type != "cpu":
            call(*args, **kw)
            return
        self.guard.wait_work(call(*args, async_op=True, **kw))

    def gather_tp(self, local, out) -> None:
        """out [tp_size, n] (uint8) <- every TP rank's `local` (uint8, n bytes)."""
        import torch.distributed as dist

        if self.tp_size == 1:
            out[0].copy_(local)
            return
        one = getattr(dist, "all_gather_single", None) or getattr(dist, "all_gather_into_tensor", None)
        if one is not None:  # (gloo too: no flattened copy of the list)
            self._run(one, local, out.view(-1), local, group=self.tp_group)
        else:
            self._run(dist.all_gather, local, list(out.unbind(0)), local, group=self.tp_group)

    def gather_tp_to(self, local, out, dst: int) -> None:
        """out [tp_size, n] on TP rank dst (None elsewhere) <- every TP rank's `local`."""
        import torch.distributed as dist

        if self.tp_size == 1:
            out[0].copy_(local)
            return
        self._run(dist.gather, local, local, list(out.unbind(0)) if self.tp == dst else None,
                  dst=dist.get_global_rank(self.tp_group, dst), group=self.tp_group)

    def send_pp(self, buf, to: int) -> None:
        """(send and recv block, between two ranks: gloo's p2p work says it is complete only
        once waited for, so it cannot be waited for in slices as the collectives are)"""
        import torch.distributed as dist

        dist.send(buf, dst=dist.get_global_rank(self.pp_group, to), group=self.pp_group)

    def recv_pp(self, buf, frm: int) -> None:
        import torch.distributed as dist

        dist.recv(buf, src=dist.get_global_rank(self.pp_group, frm), group=self.pp_group)

    def broadcast_pp(self, buf, owner: int) -> None:
        """buf (uint8) on every PP rank <- buf of PP rank `owner` (same TP rank)."""
        import torch.distributed as dist

        if self.pp_size > 1:
            self._run(dist.broadcast, buf, buf, src=dist.get_global_rank(self.pp_group, owner), group=self.pp_group)


def grid(tp_group=None, pp_group=None, parallel_context=None) -> Grid:
    """The grid from the two groups (or anything with `tp_pg` and `pp_pg`, as Nanotron's
    ParallelContext); None for a group means size 1."""
    if parallel_context is not None:
        tp_group = tp_group if tp_group is not None else parallel_context.tp_pg
        pp_group = pp_group if pp_group is not None else parallel_context.pp_pg
    import torch.distributed as dist

    on = dist.is_available() and dist.is_initialized()

    def place(g):
        if g is None or not on:
            return 0, 1
        return dist.get_rank(g), dist.get_world_size(g)

    (tp, tps), (pp, pps) = place(tp_group), place(pp_group)
    return Grid(tp_group, pp_group, tp, pp, tps, pps, dist.get_rank() if on else 0)


def start_call(g: Grid, fn: str, args: tuple, timeout: float, step_timeout: float | None) -> None:
    """The start handshake of a call of nanokern.live.<fn> (guard.py): every rank of the grid
    within `timeout` seconds, with the same args, or one NanokernError; then g.guard is the
    call's barrier and abort flag (each wait between steps bounded by step_timeout; None: the
    store's own timeout, the process group's)."""
    if g.tp_size * g.pp_size == 1:
        return
    import torch.distributed as dist

    try:
        store = dist.distributed_c10d._get_default_store()
    except (AttributeError, RuntimeError, ValueError):
        return  # no store to talk through: the collectives' own timeout is all there is
    members = lambda grp: dist.get_process_group_ranks(grp) if grp is not None else [g.rank]  # noqa: E731
    if step_timeout is None:
        step_timeout = store.timeout.total_seconds()
    g.guard = _guard.start(store, members(g.tp_group), members(g.pp_group), g.rank, fn, args, timeout, step_timeout)


def as_bytes(t):
    """A contiguous tensor's bytes, flat (uint8 view, no copy)."""
    import torch

    return t.reshape(-1).view(torch.uint8)
