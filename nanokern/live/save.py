"""save_hf: the folder `nanokern convert --to hf` writes from the saved checkpoint, written from
the job's shards. The files are split over the grid's ranks as convert splits them over its
processes; each rank's files are written by the execute layer's writer (execute/write.py:
header, chunks, CRC32s, O_DIRECT) in a thread, from output buffers the collective loop fills
(two, so the next tensor is cast while one is written); grid rank 0 holds the output's lock,
writes the configs and the manifest, makes everything durable and renames the folder into place
(execute/run.py), so the output is atomic and durable as convert's.
"""

from __future__ import annotations

import contextlib
import queue
import secrets
import shutil
import threading
from pathlib import Path

import numpy as np

from nanokern.errors import NanokernError
from nanokern.execute import diskspace, durable, manifest
from nanokern.execute import lock as outlock
from nanokern.execute.distributed import split_by_bytes
from nanokern.execute.replace import check_target, recover
from nanokern.execute.run import _complete
from nanokern.execute.write import write_file
from nanokern.live.export import fill_stats, setup
from nanokern.live.gather import Budget
from nanokern.live.guard import watching
from nanokern.live.stream import out_view, produce, storage
from nanokern.ops import host
from nanokern.plan import OutFile, OutTensor, Piece
from nanokern.io.safetensors import TensorRef


class Handoff:
    """The writer's "sources": output tensor `name` is the buffer the loop handed over for it
    (blocking until it comes); asking for the next one gives the previous buffer back."""

    def __init__(self, free: threading.Semaphore):
        self.q: queue.Queue = queue.Queue()
        self.free = free
        self.name, self.arr = None, None

    def array(self, ref) -> np.ndarray:
        name = ref.path[len("out:"):]
        if name != self.name:
            self.done()
            item = self.q.get()
            if item is None:
                raise NanokernError("cancelled: another rank failed")
            self.name, self.arr = item
            assert self.name == name, (self.name, name)
        return self.arr.reshape(ref.shape)

    def tensor(self, ref):
        import torch

        a = self.array(ref)
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) if ref.dtype.short == "bf16" else torch.from_numpy(a)

    def done(self) -> None:
        if self.name is not None:
            self.name, self.arr = None, None
            self.free.release()


def made(t: OutTensor) -> bool:
    """Whether the collective loop makes t (not zeros: Qwen2's absent biases); an FP8 weight's
    scales are made with it."""
    return bool(t.pieces) or t.quant == "scale_inv"


def as_copy(f: OutFile) -> OutFile:
    """The file with each tensor read whole from its handed-over buffer (same header, offsets):
    FP8 values copied as they are (execute/fill.py), the rest by the same-dtype kernel."""
    ts = []
    for t in f.tensors:
        rows, cols = t.shape2d
        ref = TensorRef(f"out:{t.name}", 0, t.dtype, (rows, cols))
        ts.append(OutTensor(t.name, t.shape, t.dtype, [], [Piece(ref, None, 0, rows, 0, cols, 0, 0)] if made(t) else [], t.offset))
    return OutFile(f.path, ts, f.metadata, f.header)


def writers(plan, g):
    """(every tensor in file order, dest): dest(t) is the grid index of the rank that writes t's
    file (the files split over the ranks by bytes, as convert splits them over its processes)."""
    owner = {}
    for r, idx in enumerate(split_by_bytes([f.size for f in plan.files], g.tp_size * g.pp_size)):
        owner.update({plan.files[i].path: r for i in idx})
    file_of = {t.name: owner[f.path] for f in plan.files for t in f.tensors}
    return [t for f in plan.files for t in f.tensors], (lambda t: file_of[t.name])


def _prepare(s, dst: Path, work: Path, force: bool, held: contextlib.ExitStack, wait: bool) -> None:
    """Grid rank 0: the lock, recovery of what a killed run left, the checks; every rank: the verdict."""
    error = None
    if s.g.index == 0:
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            held.enter_context(outlock.hold(dst, wait=wait))
            recover(dst, keep=work)
            check_target(dst, force)
            diskspace.check_fits(dst, [f.size for f in s.lp.plan.files] + [len(d) for d in s.lp.plan.aux.values()])
            manifest.make_work(work)
        except NanokernError as e:
            error = str(e)
    verdict = s.g.all_gather_object(error)[0]
    if verdict is None:
        verdict = manifest.seen_by_all(work, s.g.all_gather_object)
        if verdict is not None and s.g.index == 0:
            shutil.rmtree(work)  # (nothing written in it yet)
    if verdict is not None:
        raise NanokernError(verdict)


def save_hf(src, out_dir, tp_group=None, pp_group=None, dtype: str = "bf16", tokenizer=None, max_shard_size="5GB", *,
            parallel_context=None, vocab_size: int | None = None, force: bool = False, wait: bool = False,
            backend: str = "auto", rope_interleaved: bool | None = None, hf_arch: str | None = None,
            progress: bool = False, timeout: float = 60.0, stats: dict | None = None, fp8_scale: str = "float") -> Path:
    """Write the HF folder `nanokern convert --to hf` writes from the saved checkpoint (same
    tensors, config, index, tokenizer files, manifest). Collective over the TP x PP grid; out_dir
    must be on a filesystem every rank sees. An existing out_dir is replaced only with force.
    Nothing is at out_dir until the whole folder is durable; on an error on any rank, nothing.
    dtype "fp8" (fp8_scale "float" or "ue8m0"): `convert --dtype fp8 [--fp8-scale ...]`'s folder.
    timeout: every rank within that many seconds at the start (else NanokernError, no hang);
    a rank that fails later stops the others at once (their waits for one another are bounded
    by the process group's timeout only: writing may take long)."""
    s = setup(src, tp_group, pp_group, parallel_context, dtype, vocab_size, max_shard_size, tokenizer, rope_interleaved,
              hf_arch, backend, call=("save_hf", ()), timeout=timeout, step_timeout=None, fp8_scale=fp8_scale)
    with watching(s.g.guard):
        return _save(s, out_dir, force, wait, progress, stats)


def _save(s, out_dir, force: bool, wait: bool, progress: bool, stats) -> Path:
    plan, g = s.lp.plan, s.g
    dst = Path(out_dir).absolute()
    dsts = g.all_gather_object(str(dst))
    if len(set(dsts)) > 1:  # before anything is written: every rank writes into one folder
        raise NanokernError(f"out_dir differs across ranks (rank 0: {dsts[0]}, rank {next(r for r, d in enumerate(dsts) if d != dsts[0])}: "
                            f"{next(d for d in dsts if d != dsts[0])}): give every rank the same path, on a filesystem every rank sees")
    nonce = g.all_gather_object(secrets.token_hex(6))[0]  # a live export never resumes: weights move
    work = manifest.partial_dir(dst, f"live-{nonce}")
    order, dest = writers(plan, g)
    mine = [f for f in plan.files if dest(f.tensors[0]) == g.index]
    wanted = lambda t: dest(t) == g.index and made(t)  # noqa: E731
    with contextlib.ExitStack() as held:
        _prepare(s, dst, work, force, held, wait)
        entries, error = _write(s, order, wanted, dest, mine, work, progress, stats)
        if error is None and durable.batched():
            durable.syncfs(work)  # this rank's files, before rank 0 records them
        gathered = g.all_gather_object((None if error is None else str(error), entries))
        failed = [(r, msg) for r, (msg, _) in enumerate(gathered) if msg is not None]
        if failed:
            if g.index == 0:
                shutil.rmtree(work, ignore_errors=True)
            g.barrier()
            if error is not None:
                raise error
            raise NanokernError(f"rank {failed[0][0]} failed: {failed[0][1]}")
        error = None
        if g.index == 0:
            try:
                _complete(plan, work, dst, {p: e for _, es in gathered for p, e in es.items()}, durable.batched())
            except Exception as e:  # noqa: BLE001 - every rank raises it
                error = e
        verdict = g.all_gather_object(None if error is None else str(error))[0]
        if error is not None:
            raise error
        if verdict is not None:
            raise NanokernError(f"rank 0 failed: {verdict}")
    return dst


def _write(s, order, wanted, dest, mine, work: Path, progress: bool, stats):
    """The collective loop (this thread) and this rank's writer (a thread): (entries, error)."""
    import torch

    gpu = s.device.type != "cpu"
    free = threading.Semaphore(2)
    hand = Handoff(free)
    failed = threading.Event()
    entries: dict[str, dict] = {}
    errors: list[BaseException] = []
    wbackend = "cpu" if host.ERROR is None else "torch"

    def writer():
        try:
            for f in mine:
                (work / f.path).parent.mkdir(parents=True, exist_ok=True)
                entries[f.path] = write_file(as_copy(f), work / f.path, hand, wbackend, fsync=not durable.batched())
                hand.done()
        except BaseException as e:  # noqa: BLE001 - reported to every rank
            errors.append(e)
            failed.set()
            free.release(2)

    def before() -> bool:
        while not free.acquire(timeout=0.1):
            if failed.is_set():
                return False
        return not failed.is_set()

    budget, hosts = Budget(), []
    size = max((t.nbytes for t in order if wanted(t)), default=0)
    if gpu and size:
        hosts = [torch.empty(size, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
    thread = threading.Thread(target=writer, name="nanokern-live-writer", daemon=True)
    thread.start()
    bar = None
    if progress and s.g.index == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(map(wanted, order)), unit="tensor", leave=False, desc="save_hf")
    k = 0
    try:
        for t, out in produce(s.lp, s.sh, s.g, order, wanted, s.backend, s.device, budget, 1 if gpu else 2, before, dest):
            if gpu:
                h = out_view(hosts[k % 2], t)
                h.copy_(out)
                out, k = h, k + 1
            hand.q.put((t.name, storage(out)))
            if bar:
                bar.update(1)
    except BaseException:
        hand.q.put(None)
        raise
    finally:
        if bar:
            bar.close()
    thread.join()
    fill_stats(stats, budget, order, wanted, 1 if gpu else 2)
    if stats is not None and gpu:
        stats["pinned_host_bytes"] = 2 * size
    return entries, (errors[0] if errors else None)
