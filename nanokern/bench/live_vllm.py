"""The vLLM source's paths for `nanokern bench live --mode buckets` (live_paths.HOOKS, filled by
live_buckets.worker when vLLM's weight-transfer API imports on every rank of the grid):

- vllm_full: live.vllm_source's iter_full() on every rank of the grid (each PP stage its own
  layers, whole, gathered over its TP group); the stage's first owner (its TP rank 0) sends each
  tensor straight into place on the engine, as per_tensor does (one broadcast in flight, over a
  group of that rank and the engine);
- vllm_local: iter_local(): every owner sends its piece over its own group with the engine (a
  Shard tensor's chunk, built from the rank's own memory; a replicated one whole, from its first
  owner only), and the engine puts each chunk in place by the declared placements (torch.chunk of
  the tensor along the Shard dim, in owner order; a chunk that is not contiguous there lands in a
  buffer first, then is copied).
The engine takes each sender's stream in metadata order, the senders at once (a thread each:
the stages, and vllm_local's TP ranks, send in parallel); the metadata rows and the groups are
set up once, untimed, as per_tensor's names and shapes are.

vLLM is imported as installed, or from the folder the environment variable NANOKERN_VLLM_PATH
names (appended to sys.path: its packages come after the environment's own).
"""

from __future__ import annotations

import os
import sys

VLLM_PATH = "NANOKERN_VLLM_PATH"


def find() -> str | None:
    """None when vLLM's weight-transfer API imports here, else why not (one line)."""
    path = os.environ.get(VLLM_PATH)
    if path and path not in sys.path:
        sys.path.append(path)
    from nanokern.errors import NanokernError
    from nanokern.live.vllm_source import source_class

    try:
        source_class()
    except NanokernError as e:
        return f"{e} (set {VLLM_PATH} to a folder holding it)"
    except Exception as e:  # (a vLLM that imports but breaks on this environment's packages)
        return f"vLLM's weight-transfer API failed to import: {type(e).__name__}: {e}".splitlines()[0]
    return None


def prepare(c, engine: int) -> None:
    """Every rank of the world, untimed: a group of each grid rank and the engine (c.links), the
    source's metadata rows on every rank (c.rows: name -> (name, dtype, shape, owners, dim)) and,
    on the engine, a buffer for the largest chunk per sender (c.chunk_bufs)."""
    import torch
    import torch.distributed as dist

    from nanokern import live

    c.links = [dist.new_group([r, engine]) for r in range(engine)]
    rank, rows = dist.get_rank(), [None]
    if rank < engine:
        rows[0] = live.vllm_source(c.sh, c.tpg, c.ppg, c.od).layout.rows()
    if rank in (0, engine):
        dist.broadcast_object_list(rows, src=0, group=c.update)
    c.rows = {r[0]: r for r in rows[0]}
    if dist.get_rank() == engine:
        sizes = [torch.Size(shape).numel() * dt.itemsize // len(owners)
                 for _, dt, shape, owners, dim in rows[0] if dim is not None]
        c.chunk_bufs = {r: torch.empty(max(sizes, default=0), dtype=torch.uint8, device=c.device) for r in range(engine)}


def _send_all(c, pieces, local: bool) -> None:
    import torch.distributed as dist

    from nanokern.bench.live_paths import Sender, flat_bytes

    r = dist.get_rank()
    out = Sender(c.links[r], src=r)
    for name, t in pieces:
        _, _, _, owners, dim = c.rows[name]
        if owners[0] == r or (local and dim is not None):
            out.send(flat_bytes(t))  # (the work holds t: its buffer is not refilled while it is sent)
    out.wait()


def full_trainer(c) -> None:
    from nanokern import live

    _send_all(c, live.vllm_source(c.sh, c.tpg, c.ppg, c.od).iter_full(), local=False)


def full_engine(c) -> None:
    import torch.distributed as dist

    from nanokern.bench.live_paths import flat_bytes

    _receive({name: [(owners[0], lambda o=owners[0], t=c.model[name]: dist.broadcast(flat_bytes(t), src=o, group=c.links[o]))]
              for name, _, _, owners, _ in c.rows.values()})


def local_trainer(c) -> None:
    from nanokern import live

    _send_all(c, live.vllm_source(c.sh, c.tpg, c.ppg, c.od).iter_local(), local=True)


def local_engine(c) -> None:
    import torch
    import torch.distributed as dist

    from nanokern.bench.live_paths import flat_bytes

    def into(o, piece, dt):
        if piece.is_contiguous():
            dist.broadcast(flat_bytes(piece), src=o, group=c.links[o])
        else:  # (this sender's own buffer: its thread alone uses it)
            tmp = c.chunk_bufs[o][: piece.numel() * dt.itemsize]
            dist.broadcast(tmp, src=o, group=c.links[o])
            piece.copy_(tmp.view(dt).view(piece.shape))

    todo = {}
    for name, dt, _, owners, dim in c.rows.values():
        whole = c.model[name]
        if dim is None:
            todo[name] = [(owners[0], lambda o=owners[0], t=whole: dist.broadcast(flat_bytes(t), src=o, group=c.links[o]))]
            continue
        chunks = torch.chunk(whole, len(owners), dim)
        if len(chunks) != len(owners) or len({x.shape for x in chunks}) != 1:
            raise RuntimeError(f"{name}: {tuple(whole.shape)} does not split into {len(owners)} equal chunks along dim {dim}")
        todo[name] = [(o, lambda o=o, x=x, dt=dt: into(o, x, dt)) for o, x in zip(owners, chunks)]
    _receive(todo)


def _receive(todo: dict) -> None:
    """Run {name: [(sender, receive)]}: each sender's receives in metadata order, the senders at
    once (a thread each: every PP stage, every TP rank sends its own stream)."""
    from concurrent.futures import ThreadPoolExecutor

    streams: dict[int, list] = {}
    for items in todo.values():
        for o, fn in items:
            streams.setdefault(o, []).append(fn)
    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        for f in [pool.submit(lambda fns=fns: [fn() for fn in fns]) for fns in streams.values()]:
            f.result()


PATHS = {"vllm_full": (full_trainer, full_engine), "vllm_local": (local_trainer, local_engine)}
