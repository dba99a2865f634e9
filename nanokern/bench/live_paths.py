"""The paths `nanokern bench live --mode buckets` times (live_buckets.py), each a pair of
functions: the trainer side (every rank of the TP x PP grid; grid rank 0 sends to the engine)
and the engine side, both given the run's context `c` (live_buckets.worker)."""

from __future__ import annotations

import json
from pathlib import Path


def flat_bytes(t):
    import torch

    return t.reshape(-1).view(torch.uint8)


class Sender:
    """A grid rank's sends to the engine (grid rank 0's unless src says), each started
    asynchronously and waited for before the next one starts: one in flight while the next
    bucket (or tensor) is gathered and filled; with hf_buckets' two buffers, the one being sent
    is never the one being filled."""

    def __init__(self, group, src: int = 0):
        self.group, self.src, self.work = group, src, None

    def send(self, t) -> None:
        import torch.distributed as dist

        self.wait()
        self.work = dist.broadcast(t, src=self.src, group=self.group, async_op=True)

    def wait(self) -> None:
        if self.work is not None:
            self.work.wait()
            self.work = None


def floor_trainer(c) -> None:
    """hf_buckets' pattern with nothing converted: the same handshake, each tensor's units to grid
    rank 0 in the same order (the same collectives, Units), and when a bucket's last tensor is
    reached, that many bytes sent from one of two buffers, asynchronously, as buckets_trainer does."""
    import torch.distributed as dist

    from nanokern.live.buckets import layout
    from nanokern.live.export import setup, state_dict_order
    from nanokern.live.gather import Budget, Units

    s = setup(c.sh, c.tpg, c.ppg, dtype=c.od, call=("hf_buckets", (("ranks", 0), ("bucket_bytes", c.bucket_bytes))))
    order = state_dict_order(s.lp)
    ends = {id(g[-1][0]): g[-1][1] + g[-1][0].nbytes for g in layout(order, c.bucket_bytes)}
    units, out, k = Units(s.lp, s.sh, s.g, order, s.device, Budget(), dest=lambda t: 0), Sender(c.update), 0
    try:
        for i, t in enumerate(order):
            units.step(i)
            units.release(i)
            if id(t) in ends and dist.get_rank() == 0:
                out.send(c.bufs[k % 2][: ends[id(t)]])
                k += 1
        out.wait()
    finally:
        units.close()


def floor_engine(c) -> None:
    import torch.distributed as dist

    for n in c.sizes:
        dist.broadcast(c.buf[:n], src=0, group=c.update)


def buckets_trainer(c) -> None:
    """The README's push, with the send of each bucket overlapping the filling of the next, into
    the buffers kept across reps (c.kept, a live.BucketBuffers: every send is waited for before
    the call ends, so the next call may refill them)."""
    import torch.distributed as dist

    from nanokern import live

    out = Sender(c.update)
    for b in live.hf_buckets(c.sh, c.tpg, c.ppg, c.od, ranks=0, bucket_bytes=c.bucket_bytes, num_buffers=2, buffers=c.kept):
        head = {k: v for k, v in vars(b).items() if k != "packed_tensor"}
        out.wait()  # (the object broadcast below goes after it on the same group)
        dist.broadcast_object_list([{**head, "nbytes": b.packed_tensor.numel()}], src=0, group=c.update)
        out.send(b.packed_tensor)
    out.wait()


def buckets_engine(c) -> None:
    import torch.distributed as dist

    from nanokern import live

    while True:
        head = [None]
        dist.broadcast_object_list(head, src=0, group=c.update)
        head = head[0]
        bucket = live.Bucket(packed_tensor=c.buf[: head.pop("nbytes")], **head)
        dist.broadcast(bucket.packed_tensor, src=0, group=c.update)
        for name, t in live.unpack(bucket):
            c.model[name].copy_(t)
        if bucket.last:
            return


def per_tensor_trainer(c) -> None:
    from nanokern import live

    out = Sender(c.update)
    for _, t in live.hf_weights(c.sh, c.tpg, c.ppg, c.od, ranks=0):
        out.send(flat_bytes(t))  # (the work holds t: its buffer is not refilled while it is sent)
    out.wait()


def per_tensor_engine(c) -> None:
    import torch.distributed as dist

    for name, *_ in c.meta:
        dist.broadcast(flat_bytes(c.model[name]), src=0, group=c.update)


PATHS = {"floor": (floor_trainer, floor_engine), "buckets": (buckets_trainer, buckets_engine),
         "per_tensor": (per_tensor_trainer, per_tensor_engine)}

# ---- hook: the vLLM source ---------------------------------------------------------------------
# A path added here as name -> (trainer(c), engine(c)) is timed and checked like the ones above
# (c: SimpleNamespace with sh, tpg, ppg, update, od, bucket_bytes, meta, sizes, buf, model, device;
# the engine's tensors must end up in c.model). nanokern.live's vLLM source registers its own
# path here; nothing in this module depends on it.
HOOKS: dict[str, tuple] = {}


def two_step(c, tp: int, pp: int, nt: Path, out: Path) -> None:
    import torch.distributed as dist
    from safetensors.torch import load_file

    from nanokern.bench.live_ranks import save_nanotron
    from nanokern.convert import convert
    from nanokern.formats.nanotron import layout as L
    from nanokern.formats.nanotron import read_checkpoint

    rank = dist.get_rank()
    if c.sh is not None:
        ck = read_checkpoint(c.ckpt)
        save_nanotron(c.sh, nt / "0", tp, pp, c.tps, c.pps, L.pp_stage_blocks(ck.spec, ck.spec.vocab_size, c.pps))
        if rank == 0:
            (nt / "0" / "model_config.json").write_text(json.dumps(c.sh.config))
            (nt / "latest.txt").write_text("0")
    dist.barrier()
    convert(nt, out, to="hf", dtype=c.od, device=c.device.type, progress=False)  # (every rank of the world)
    dist.barrier()
    if c.model is not None:
        for f in sorted(out.glob("*.safetensors")):
            for name, t in load_file(str(f)).items():
                c.model[name].copy_(t)
