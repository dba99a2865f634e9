"""hf_buckets: the HF tensors of a running job packed into flat byte buckets, ready to send to an
inference engine in few large messages. The gather-cast kernel writes each tensor straight into
its place in the bucket (no tensor assembled, then copied). A bucket carries vLLM's packed-chunk
fields (packed_tensor, names, shapes, dtypes, tensor_sizes), SGLang's flattened-bucket offsets
(starts / ends), its index, whether it is the last, and a CRC32 of its bytes; unpack() gives the
tensors back as views. BucketBuffers: the buffers kept across calls (a job that pushes its
weights every few steps fills the same memory each time, no fresh pages).
"""

from __future__ import annotations

from dataclasses import dataclass

from nanokern.errors import NanokernError
from nanokern.live.export import _wanted, fill_stats, setup, state_dict_order
from nanokern.live.gather import Budget
from nanokern.live.guard import watching
from nanokern.live.stream import produce


@dataclass
class Bucket:
    packed_tensor: object  # torch uint8, 1-D: the tensors' bytes, each at its start
    names: list[str]
    shapes: list[tuple[int, ...]]
    dtypes: list  # torch dtypes
    tensor_sizes: list[int]  # bytes of each tensor
    starts: list[int]  # byte offset of each tensor in packed_tensor
    ends: list[int]  # starts[i] + tensor_sizes[i]
    index: int  # 0, 1, ... on the rank that receives them
    last: bool
    crc32: int | None  # zlib CRC-32 of packed_tensor's bytes (None: checksum=False)


class BucketBuffers:
    """hf_buckets' shared bucket buffers, kept by the caller across calls (`buffers=`): a call
    with num_buffers=n fills n of them in turn, each grown (a new one, on the shards' device)
    when this call's largest bucket is larger or the device differs, else reused as it is; more
    than n kept: the extra ones are dropped. One call at a time: a second call while another
    one with the same object is unfinished raises NanokernError.

    Reuse: a bucket's packed_tensor is overwritten num_buffers buckets later, or by the next
    call's first buckets: finish with (send, copy or clone) every bucket of a call before the
    next call with the same object starts. A tensor larger than bucket_bytes (a bucket of its
    own) is never put here: that buffer is the consumer's, as without this object.
    """

    def __init__(self):
        self._bufs: list = []
        self._busy = False

    @property
    def nbytes(self) -> int:
        """The bytes held now."""
        return sum(b.numel() for b in self._bufs)

    def _take(self, k: int, nbytes: int, device, budget: Budget):
        """Buffer k of at least nbytes on device, counted in budget as long as the call holds it."""
        while len(self._bufs) <= k:
            self._bufs.append(None)
        b = self._bufs[k]
        if b is None or b.numel() < nbytes or b.device != device:
            self._bufs[k] = None  # (the old one goes before the new one is made)
            b = self._bufs[k] = budget.alloc(nbytes, device)
        else:
            _count(budget, b)
        return b

    def _open(self, n: int) -> None:
        if self._busy:
            raise NanokernError("hf_buckets: these BucketBuffers are in use by an unfinished call (one call at a time: "
                                "finish or close the other first)")
        self._busy = True
        del self._bufs[n:]

    def _close(self) -> None:
        self._busy = False


def _count(budget: Budget, t) -> None:
    """A kept buffer counted in budget as an allocation (budget.free uncounts it)."""
    budget._sizes[id(t)] = t.numel()
    budget.now += t.numel()
    budget.peak = max(budget.peak, budget.now)


def layout(tensors, bucket_bytes: int) -> list[list[tuple[object, int]]]:
    """[[(tensor, start), ...] per bucket]: tensors in order, packed while they fit in
    bucket_bytes, each start a multiple of its element size (contiguous when all share a
    dtype, as vLLM's split by tensor_sizes reads them); a larger tensor gets a bucket of its own."""
    out: list[list] = []
    end = 0
    for t in tensors:
        align = t.dtype.torch.itemsize
        start = -(-end // align) * align
        if not out or start + t.nbytes > bucket_bytes:
            out.append([])
            start = 0
        out[-1].append((t, start))
        end = start + t.nbytes
    return out


def _crc(packed) -> int:
    from zlib_ng.zlib_ng import crc32

    return crc32(packed.cpu().numpy())


def hf_buckets(src, tp_group=None, pp_group=None, dtype: str = "bf16", *, parallel_context=None, ranks="all",
               bucket_bytes: int = 1 << 30, num_buffers: int = 2, checksum: bool = True, vocab_size: int | None = None,
               backend: str = "auto", rope_interleaved: bool | None = None, hf_arch: str | None = None,
               timeout: float | None = 60.0, stats: dict | None = None, fp8_scale: str = "float",
               buffers: BucketBuffers | None = None):
    """Yield Buckets holding, in order, every tensor hf_weights yields (same names, order, bytes).
    dtype, fp8_scale: as hf_weights (an FP8 weight, then its scales). Collective as hf_weights: every rank of the TP x PP grid iterates it to the end; ranks="all"
    (every rank gets every bucket) or one global rank R (only R gets buckets; the others take part).

    Packing: tensors follow each other in the bucket while they fit in bucket_bytes; a tensor
    larger than bucket_bytes gets a bucket of its own (a buffer of its size, the consumer's).
    Buffers: `num_buffers` of the largest bucket (at most bucket_bytes), on the shards' device,
    used in turn: a bucket's packed_tensor is overwritten only num_buffers buckets later, so the
    consumer may send one (asynchronously) while the next ones fill; keep it longer: clone it.
    buffers: a BucketBuffers the caller keeps across calls: those buffers are filled instead of
    new ones (grown when needed); then a bucket is also overwritten by the next call with the
    same object, so finish with every bucket of a call before the next one starts. None: new
    buffers each call, freed when the consumer drops its last bucket.
    checksum: the CRC32 of each bucket's bytes (on a GPU, read through a host copy).
    Memory per rank: num_buffers x the largest bucket (buffers=: of any call since), plus the largest tensor of its own bucket
    while it is the current one, plus the gathered units (stats=: peak_bytes, bound_bytes).
    timeout: as hf_weights' (the start handshake; the wait for the other ranks between steps).
    """
    if bucket_bytes < 1 or num_buffers < 1:
        raise NanokernError(f"bucket_bytes and num_buffers must be positive, not {bucket_bytes} and {num_buffers}")
    if buffers is not None and not isinstance(buffers, BucketBuffers):
        raise NanokernError(f"buffers must be a live.BucketBuffers or None, not {type(buffers).__name__}")
    s = setup(src, tp_group, pp_group, parallel_context, dtype, vocab_size, "5GB", None, rope_interleaved, hf_arch, backend,
              call=("hf_buckets", (("ranks", ranks), ("bucket_bytes", bucket_bytes))),
              timeout=60.0 if timeout is None else timeout, step_timeout=timeout, fp8_scale=fp8_scale)
    with watching(s.g.guard):
        yield from _buckets(s, ranks, bucket_bytes, num_buffers, checksum, stats, buffers)


def _buckets(s, ranks, bucket_bytes: int, num_buffers: int, checksum: bool, stats, kept: BucketBuffers | None = None):
    order = state_dict_order(s.lp)
    wanted, dest = _wanted(ranks, s.g)
    groups = layout([t for t in order if wanted(t)], bucket_bytes)
    where = {t.name: (b, start) for b, grp in enumerate(groups) for t, start in grp}
    size = lambda grp: grp[-1][1] + grp[-1][0].nbytes  # noqa: E731
    own = [len(g) == 1 and g[0][0].nbytes > bucket_bytes for g in groups]
    shared = max((size(g) for g, o in zip(groups, own) if not o), default=0)
    slot = {b: k % num_buffers for k, b in enumerate(b for b, o in enumerate(own) if not o)}
    budget = Budget()
    bufs: list = []
    turn = {}  # bucket -> its buffer (a shared one in turn, or its own)
    single = [None]
    if kept is not None:
        kept._open(num_buffers)

    def place(t):
        b, start = where[t.name]
        if b not in turn:
            if own[b]:
                single[0] = turn[b] = budget.alloc(t.nbytes, s.device)
            else:
                if slot[b] == len(bufs):
                    bufs.append(budget.alloc(shared, s.device) if kept is None else kept._take(slot[b], shared, s.device, budget))
                turn[b] = bufs[slot[b]]
        return turn[b][start : start + t.nbytes]

    try:
        for t, out in produce(s.lp, s.sh, s.g, order, wanted, s.backend, s.device, budget, dest=dest, place=place):
            del out
            b, _ = where[t.name]
            if t is not groups[b][-1][0]:
                continue
            packed = turn.pop(b)[: size(groups[b])]
            grp = groups[b]
            bucket = Bucket(packed, [x.name for x, _ in grp], [tuple(x.shape) for x, _ in grp], [x.dtype.torch for x, _ in grp],
                            [x.nbytes for x, _ in grp], [st for _, st in grp], [st + x.nbytes for x, st in grp], b,
                            b == len(groups) - 1, _crc(packed) if checksum else None)
            del packed
            yield bucket
            del bucket
            if single[0] is not None:
                budget.free(single[0])  # (the consumer's now, if it kept it)
                single[0] = None
    finally:
        for x in bufs:
            budget.free(x)
        if kept is not None:
            kept._close()
        if stats is not None:
            fill_stats(stats, budget, order, wanted, num_buffers)
            big = max((g[0][0].nbytes for g, o in zip(groups, own) if o), default=0)
            n = min(num_buffers, len(slot))
            mine = n * shared if kept is None else sum(x.numel() for x in bufs)  # (kept ones: maybe larger, from an earlier call)
            stats.update(bucket_bytes=shared, buckets=len(groups), out_buffers=n, bound_bytes=mine + big + budget.bound_unit)


def unpack(bucket: Bucket, verify: bool = True) -> list:
    """[(name, tensor)]: views of the bucket's packed_tensor. verify: check the CRC32 first (a
    bucket whose bytes changed, a partial or torn update, raises NanokernError)."""
    packed = bucket.packed_tensor
    if verify and bucket.crc32 is not None and _crc(packed) != bucket.crc32:
        raise NanokernError(f"bucket {bucket.index}: CRC32 {_crc(packed):08x} differs from the sender's {bucket.crc32:08x}: "
                            f"its bytes changed after it was packed (a partial or torn update)")
    return [(n, packed[a:e].view(dt).view(shape)) for n, shape, dt, a, e in
            zip(bucket.names, bucket.shapes, bucket.dtypes, bucket.starts, bucket.ends)]
