"""Execute a plan: stream bytes from memory-mapped sources into output files, atomically.

Every output file's header and tensor offsets are known from the plan, so each file is
produced front to back: the fused gather_cast kernel reads the memory-mapped sources and
writes each chunk of rows straight into a reused, aligned staging buffer that writer threads
send to disk (O_DIRECT where allowed, direct_io.py): every byte is written once, no tensor is
ever whole in memory, no save_file. While a chunk is being written, a checker thread
accumulates its CRC32 (for `nanokern verify`) and checks it for NaN/inf. Files are written in
parallel threads, and across processes under torchrun. The output is built in a `DST.partial-*`
folder beside DST, fsynced, and renamed into place when complete; a killed run leaves DST
untouched and the next identical run reuses the files it had finished.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from zlib_ng.zlib_ng import crc32  # zlib's CRC-32, SIMD: 2.4x the stdlib's speed here

from nanokern import diskspace, distributed, signals
from nanokern import lock as outlock
from nanokern.direct_io import FIRST_CHUNK, SequentialWriter, SmallFileWriter
from nanokern.errors import NanokernError, OutOfSpace
from nanokern.formats.safetensors_io import map_tensor
from nanokern.plan import OutFile, Plan
from nanokern.staging import Stager

MANIFEST = "nanokern-manifest.json"
JOURNAL_GLOB = ".nanokern-done-*.json"


@dataclass
class Report:
    files: int = 0
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reused_files: int = 0
    backend: str = ""
    workers: int = 1
    processes: int = 1
    nonfinite: list[str] = field(default_factory=list)

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


def plan_fingerprint(plan: Plan) -> str:
    """Identifies a plan's output bytes, so an interrupted run resumes only the same plan."""
    h = hashlib.sha256()
    stats: dict[str, str] = {}
    for f in plan.files:
        h.update(f.path.encode() + f.header)
        for t in f.tensors:
            for p in t.pieces:
                if p.ref.path not in stats:
                    st = os.stat(p.ref.path)
                    stats[p.ref.path] = f"{st.st_size}:{st.st_mtime_ns}"
                h.update(f"{p.ref.path}:{stats[p.ref.path]}:{p.ref.offset}:{p.row0}:{p.nrows}:{p.col0}:{p.ncols}:{p.dst_row0}:{p.dst_col0}:{p.transpose}".encode())
                if p.rows is not None:
                    h.update(p.rows.tobytes())
    for name in sorted(plan.aux):
        h.update(name.encode() + hashlib.sha256(plan.aux[name]).digest())
    return h.hexdigest()[:16]


class _Sources:
    """Memory maps of source files, opened once and shared by the worker threads."""

    def __init__(self):
        self._maps: dict = {}
        self._lock = threading.Lock()

    def tensor(self, ref) -> torch.Tensor:
        with self._lock:
            return map_tensor(ref, self._maps)

    def close(self):
        for m in self._maps.values():
            if m is not None:
                m.close()
        self._maps.clear()


def _all_finite(t: torch.Tensor) -> bool:
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t.reshape(-1))  # NaN propagates to both
    return bool(torch.isfinite(lo)) and bool(torch.isfinite(hi))


# Bytes handed to the writer threads at a time. Few large O_DIRECT writes measured fastest on
# the development VMs (1 GB: 128 MB x 2 in flight 2.1 s, 16 MB x 4 in flight 3.0 s, medians of
# 3); the chunk is also capped at the largest output tensor / (2 x workers), so that the staging
# memory, workers x (depth + 1) chunks, stays within about 1.5x the largest tensor.
CHUNK_BYTES = 128 << 20
MIN_CHUNK_BYTES = 16 << 20
WRITE_DEPTH = 2
# Files up to this size are built whole in memory and written at once, without writer threads
# (direct_io.SmallFileWriter): layer norms, biases, small shards of a TP x PP checkpoint.
SMALL_FILE_BYTES = FIRST_CHUNK


def _fill_rows(t, r0: int, r1: int, out: torch.Tensor, sources: _Sources, backend: str, stager) -> None:
    """out (rows r0..r1 of tensor t) <- every piece's share of those rows."""
    from nanokern.ops import gather_cast

    for p in t.pieces:
        a, b = max(p.dst_row0, r0), min(p.dst_row0 + p.nrows, r1)
        if a >= b:
            continue
        src = sources.tensor(p.ref)
        if p.transpose:
            src = src.t()
        src = src[:, p.col0 : p.col0 + p.ncols]
        dst = out[a - r0 : b - r0, p.dst_col0 : p.dst_col0 + p.ncols]
        k0, k1 = a - p.dst_row0, b - p.dst_row0
        rows = None if p.rows is None else p.rows[k0:k1]
        if rows is None:
            src = src[p.row0 + k0 : p.row0 + k1]
        if p.transpose and rows is not None:  # a gather from a transposed view: index_select copies it
            src, rows = src[torch.from_numpy(rows)], None
        if p.transpose and stager is None and not src.is_contiguous():
            _copy_transposed(src, dst)
            continue
        if p.transpose:
            src = src.contiguous()
        if stager is not None:
            stager.run_piece(src, rows, dst)
        else:
            gather_cast(src, None if rows is None else torch.from_numpy(rows), dst, backend=backend)


TRANSPOSE_TILE = 64  # source rows per block: 4.0 GB/s vs 1.8 GB/s for one strided copy_ (fp32 2048 x 3584, 1 thread)


def _copy_transposed(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst <- src (a transposed view, e.g. expert matrices), cast as `copy_` does (the torch
    reference), a block of source rows at a time so that reads stay in cache lines."""
    for j in range(0, src.shape[1], TRANSPOSE_TILE):
        dst[:, j : j + TRANSPOSE_TILE].copy_(src[:, j : j + TRANSPOSE_TILE])


def write_file(f: OutFile, path: Path, sources: _Sources, backend: str, on_bytes=None, stager: Stager | None = None,
               direct: bool = True, chunk: int = CHUNK_BYTES, cancel: threading.Event | None = None,
               fsync: bool = True) -> dict:
    """Write one output file; return its manifest entry (size, header and tensor CRC32s, non-finite).

    The file is produced front to back: each tensor in row chunks, gathered and cast by the
    fused kernel straight into the writer's staging buffer and handed to the writer threads
    (O_DIRECT where the filesystem allows it); the writer's checker thread takes each chunk's
    CRC32 and NaN/inf scan while it is being written.
    """
    max_row = max((t.shape2d[1] * t.dtype.itemsize for t in f.tensors), default=0)
    if f.size <= SMALL_FILE_BYTES:
        w = SmallFileWriter(path, f.size)
    else:
        w = SequentialWriter(path, f.size, chunk, max(max_row, len(f.header)), depth=WRITE_DEPTH, direct=direct)
    sums = {t.name: {"offset": t.offset, "nbytes": t.nbytes, "crc32": 0, "finite": True} for t in f.tensors}

    def digest(raw: torch.Tensor, out: torch.Tensor, s: dict) -> None:
        s["finite"] = s["finite"] and _all_finite(out)
        s["crc32"] = crc32(raw.numpy(), s["crc32"])

    try:
        w.region(len(f.header)).numpy()[:] = memoryview(f.header)
        w.advance(len(f.header))
        for t in f.tensors:
            assert w.offset == t.offset, (t.name, w.offset, t.offset)
            rows, cols = t.shape2d
            row_bytes = cols * t.dtype.itemsize
            covered = sum(p.nrows * p.ncols for p in t.pieces) == rows * cols
            r0 = 0
            while row_bytes and r0 < rows:
                if cancel is not None and cancel.is_set():
                    raise _Cancelled(str(path))
                r1 = min(rows, r0 + max(1, w.room // row_bytes))
                raw = w.region((r1 - r0) * row_bytes)
                out = raw.view(t.dtype).view(r1 - r0, cols)
                if not covered:
                    out.zero_()  # rows no piece covers (vocab padding) are zero
                _fill_rows(t, r0, r1, out, sources, backend, stager)
                w.check(functools.partial(digest, raw, out, sums[t.name]))
                w.advance(raw.numel())
                if on_bytes:
                    on_bytes(raw.numel())
                r0 = r1
        w.close(fsync=fsync)
    except BaseException:
        w.abort()
        raise
    if on_bytes:
        on_bytes(len(f.header))
    return {"size": f.size, "header_crc32": crc32(f.header),
            "tensors": {n: {k: v for k, v in s.items() if k != "finite"} for n, s in sums.items()},
            "nonfinite": [n for n, s in sums.items() if not s["finite"]]}


class _Cancelled(Exception):
    """Another writer failed or the run was interrupted: stop this file here."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_small(path: Path, data: bytes, fsync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


# Durability of the output files. "syncfs": files are closed without an fsync each; finished
# files are made durable together by one syncfs(2) of the output's filesystem (once SYNC_BYTES
# or SYNC_EVERY seconds of finished files are pending, and once at the end for the files,
# configs, manifest and folders), and only then journaled as finished, so a resume never
# trusts a file that is not on disk. "fsync": one fsync per file and per folder. Measured on a
# 441-file reshard (65 MB, 2-core VM, medians of 3): fsync 0.73 s, syncfs 0.38 s, cp -r + sync
# of the source 0.15 s.
DURABILITY = "syncfs"
SYNC_BYTES = 16 << 20
SYNC_EVERY = 1.0


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding `path` (Linux syncfs; os.sync() elsewhere)."""
    import ctypes

    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fn = ctypes.CDLL(None, use_errno=True).syncfs
        except (AttributeError, OSError):
            fn = None
        if fn is None or fn(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _allocated(path: Path) -> int:
    """Bytes the filesystem holds for a file (0 when it does not exist)."""
    try:
        return path.stat().st_blocks * 512
    except (FileNotFoundError, NotADirectoryError):
        return 0


def partial_dir(dst: Path, fingerprint: str) -> Path:
    return dst.parent / f"{dst.name}.partial-{fingerprint}"


def _finished(work: Path, plan: Plan) -> dict[str, dict]:
    """Files an earlier run of the same plan completed (fsynced, then journaled)."""
    done: dict[str, dict] = {}
    for j in work.glob(JOURNAL_GLOB):
        try:
            done.update(json.loads(j.read_text()))
        except (json.JSONDecodeError, OSError):
            continue
    sizes = {f.path: f.size for f in plan.files}
    return {p: e for p, e in done.items() if p in sizes and (work / p).is_file() and (work / p).stat().st_size == sizes[p]}


def execute(
    plan: Plan,
    dst: str | os.PathLike,
    backend: str = "auto",
    device: str = "cpu",
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
    strict: bool = False,
    staging_bytes: int | None = None,
    direct_io: bool = True,
    wait: bool = False,
    on_wait=None,
) -> Report:
    """Write the plan's output at DST. Under torchrun every rank calls this with the same plan.

    device="cuda": gather and cast on the GPU, staging through pinned buffers of at most
    `staging_bytes` (default 1 GiB). On the CPU, a staging budget runs the same pipeline on
    host tensors (used to test it without a GPU).

    Rank 0 holds DST's lock (lock.py) from before the first byte to after the rename: a second
    conversion for the same DST refuses at once (or waits, wait=True). Before anything is
    written, the bytes still to write are compared with the free space of DST's filesystem.
    """
    from nanokern.ops import resolve_backend

    dst = Path(dst)
    dist = distributed.init(device)
    rank, world = distributed.world() if dist else (0, 1)
    if device == "cuda" and not torch.cuda.is_available():
        raise NanokernError("--device cuda: no CUDA device is available", dst)
    backend = resolve_backend(backend, device)
    fp = plan_fingerprint(plan)
    work = partial_dir(dst, fp)
    with contextlib.ExitStack() as held:
        if rank == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
        setup_error = None
        if rank == 0:
            try:
                held.enter_context(outlock.hold(dst, wait=wait, on_wait=on_wait))
                _recover(dst, keep=work)
                if dst.exists() and not force:
                    raise NanokernError("output exists (use --force to replace it)", dst)
                reusable = _finished(work, plan) if work.is_dir() else {}
                # an unfinished file left by an interrupted run is rewritten in place: its blocks count as free
                diskspace.check_fits(dst, [max(0, f.size - _allocated(work / f.path)) for f in plan.files if f.path not in reusable]
                                     + [len(d) for d in plan.aux.values()])
                work.mkdir(exist_ok=True)
            except NanokernError as e:
                setup_error = e
        elif dst.exists() and not force:
            setup_error = NanokernError("output exists (use --force to replace it)", dst)
        if dist:
            shared = [None if setup_error is None else str(setup_error)]
            dist.broadcast_object_list(shared, src=0)
            if shared[0] is not None and setup_error is None:
                setup_error = NanokernError(shared[0])
        if setup_error is not None:
            raise setup_error
        return _execute_in(plan, dst, work, backend, device, workers, progress, strict, staging_bytes, direct_io,
                           dist, rank, world)


def _execute_in(plan, dst, work, backend, device, workers, progress, strict, staging_bytes, direct_io, dist, rank,
                world) -> Report:
    done = _finished(work, plan)
    mine_idx = distributed.split_by_bytes([f.size for f in plan.files], world)[rank]
    mine = [plan.files[i] for i in mine_idx]
    todo = sorted((f for f in mine if f.path not in done), key=lambda f: -f.size)
    workers = max(1, workers or min(4, os.cpu_count() or 1, max(1, len(todo))))
    report = Report(backend=backend, workers=workers, processes=world, reused_files=sum(f.path in done for f in mine))
    journal = work / f".nanokern-done-{rank}.json"
    t0 = time.perf_counter()
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(f.size for f in mine), unit="B", unit_scale=True, unit_divisor=1024,
                   desc="convert" if world == 1 else f"convert (rank 0 of {world})", leave=False)
        bar.update(sum(f.size for f in mine if f.path in done))
    lock = threading.RLock()  # re-entrant: a signal may arrive while the main thread holds it
    stop = threading.Event()  # set on the first error or signal: the other writers stop at their next chunk
    sources = _Sources()
    largest = max((t.nbytes for f in plan.files for t in f.tensors), default=0)
    chunk = max(MIN_CHUNK_BYTES, min(CHUNK_BYTES, largest // (2 * workers)))
    stager = None
    if device == "cuda" or staging_bytes is not None:
        stager = Stager(device, (staging_bytes or 1 << 30) // workers, backend)
    entries = {p: e for p, e in done.items() if p in {f.path for f in mine}}
    batched = DURABILITY == "syncfs"
    pending: dict[str, dict] = {}  # finished files not yet made durable (batched)
    last_sync = [time.monotonic()]

    def save_journal():
        tmp = journal.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries))
        os.replace(tmp, journal)

    def make_durable():  # under `lock`: one syncfs for every file finished since the last one
        if not pending:
            return
        _syncfs(work)
        last_sync[0] = time.monotonic()
        entries.update(pending)
        pending.clear()
        save_journal()

    def tick(n):
        if bar:
            with lock:
                bar.update(n)

    def run(f: OutFile):
        if stop.is_set():
            return
        target = work / f.path
        try:
            entry = write_file(f, target, sources, backend, tick, stager, direct_io, chunk, cancel=stop, fsync=not batched)
        except OSError as e:
            if e.errno in diskspace.NO_SPACE:
                raise OutOfSpace("no space left on the device while writing it", target) from None
            raise
        if strict and entry["nonfinite"]:
            raise NanokernError(f"non-finite values (NaN/inf) in {', '.join(entry['nonfinite'][:3])} (--strict)", plan.source.path)
        with lock:
            if batched:
                pending[f.path] = entry
                if (time.monotonic() - last_sync[0] >= SYNC_EVERY
                        or sum(e["size"] for e in pending.values()) >= SYNC_BYTES):
                    make_durable()
            else:
                entries[f.path] = entry
                save_journal()

    with signals.raising():  # from here a signal raises Interrupted: the finished files are kept
        report = _write_all(plan, dst, work, todo, mine, entries, pending, workers, run, make_durable, lock, stop,
                            sources, bar, batched, dist, rank, world, report)
    if rank == 0:
        signals.completed(str(dst))
    report.seconds = time.perf_counter() - t0
    report.files = len(plan.files)
    report.tensors = plan.num_tensors
    report.bytes = sum(f.size for f in plan.files)
    report.nonfinite = [f"{p}: {n}" for p, e in sorted(entries.items()) for n in e["nonfinite"]]
    return report


def _write_all(plan, dst, work, todo, mine, entries, pending, workers, run, make_durable, lock, stop, sources, bar,
               batched, dist, rank, world, report) -> Report:
    error = None
    try:
        for d in sorted({(work / f.path).parent for f in todo}):
            d.mkdir(parents=True, exist_ok=True)
        if workers == 1:
            for f in todo:
                run(f)
        else:
            pool = ThreadPoolExecutor(workers)
            try:
                for fut in [pool.submit(run, f) for f in todo]:
                    fut.result()
            except BaseException:
                stop.set()
                raise
            finally:
                pool.shutdown(wait=True, cancel_futures=True)
        with lock:
            make_durable()
    except signals.Interrupted as e:  # keep the finished files: the same command resumes
        with lock:
            make_durable()
        e.kept, e.total, e.work = len(entries), len(mine), str(work)
        raise
    except KeyboardInterrupt:
        raise  # keep the finished files: the next run resumes
    except Exception as e:  # noqa: BLE001 - reported, and shared with the other ranks
        error = e
        if isinstance(e, OutOfSpace):  # keep the finished files for a resume; drop the unfinished ones
            with lock:
                for f in todo:
                    if f.path not in entries and f.path not in pending:
                        (work / f.path).unlink(missing_ok=True)  # frees room for the journal
                try:
                    make_durable()
                except OSError:
                    pass
            error = OutOfSpace(f"{e.message}; the {len(entries)} finished file(s) are kept in {work}: "
                               f"free space and run the same command to resume", e.path)
    finally:
        sources.close()
        if bar:
            bar.close()

    keep = isinstance(error, OutOfSpace)
    if dist:
        gathered = [None] * world
        dist.all_gather_object(gathered, (None if error is None else str(error), keep, entries))
        failed = [(r, msg, k) for r, (msg, k, _) in enumerate(gathered) if msg is not None]
        if failed and error is None:
            r, msg, keep = failed[0]
            error = NanokernError(f"rank {r} failed: {msg}")
        if not failed:
            for _, _, e in gathered:
                entries.update(e)
    if error is not None:
        if rank == 0 and not keep:
            shutil.rmtree(work, ignore_errors=True)
        if dist:
            dist.barrier()
        raise error

    if rank == 0:
        with signals.deferred(str(dst)):
            _finish(plan, work, dst, entries, batched)
        signals.completed(str(dst))  # DST is in place: a signal from now on (the barrier) says so
    if dist:
        dist.barrier()
    return report


def _finish(plan: Plan, work: Path, dst: Path, entries: dict, batched: bool) -> None:
    """Configs and manifest, everything durable, then into place (rank 0; signals deferred)."""
    try:
        for name, data in plan.aux.items():
            _write_small(work / name, data, fsync=not batched)
        manifest = {"format": "nanokern-manifest", "version": 1, "target": plan.target,
                    "files": {f.path: entries[f.path] for f in plan.files}}
        _write_small(work / MANIFEST, (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode(), fsync=not batched)
    except OSError as e:
        if e.errno in diskspace.NO_SPACE:
            raise OutOfSpace(f"no space left on the device while writing it; the {len(entries)} finished file(s) "
                             f"are kept in {work}: free space and run the same command to resume",
                             e.filename) from None
        raise
    for j in work.glob(JOURNAL_GLOB):
        j.unlink()
    if batched:
        _syncfs(work)  # every file, config, the manifest and every folder, at once
    else:
        for d in {work, *[(work / f.path).parent for f in plan.files]}:
            _fsync_dir(d)
    _replace(work, dst)


# Replacing an existing DST (--force) so that a kill at any moment leaves a complete DST, old or
# new: the finished folder and DST are swapped in one atomic renameat2(RENAME_EXCHANGE), then
# the old one (now at the partial folder's name) is removed. An intent file beside DST, written
# before the swap and removed after the clean-up, tells the next run what a kill left behind
# (see _recover). Where the filesystem cannot exchange, DST is renamed aside first and the next
# run puts back whichever complete folder a kill left.

def _intent_path(dst: Path) -> Path:
    return dst.parent / f"{dst.name}.replacing"


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import errno

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _write_intent(dst: Path, info: dict) -> None:
    _write_small(_intent_path(dst), json.dumps(info).encode())
    _fsync_dir(dst.parent)


def _replace(work: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        _write_intent(dst, {"mode": "exchange", "new": work.name, "ino": work.stat().st_ino})
        if _exchange(work, dst):
            _fsync_dir(dst.parent)
            shutil.rmtree(work) if work.is_dir() and not work.is_symlink() else work.unlink()
        else:
            old = dst.parent / f"{dst.name}.old-{os.getpid()}"
            _write_intent(dst, {"mode": "rename", "new": work.name, "old": old.name})
            os.replace(dst, old)
            os.replace(work, dst)
            _fsync_dir(dst.parent)
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
        _intent_path(dst).unlink()
    else:
        os.replace(work, dst)
    _fsync_dir(dst.parent)


def _recover(dst: Path, keep: Path | None = None) -> None:
    """Under DST's lock, before a run: finish or undo what a killed run left beside DST (a swap
    in progress, `DST.old-*`, partial folders of other plans); `keep` is this run's own."""
    parent = dst.parent
    intent = _intent_path(dst)
    if intent.is_file():
        try:
            info = json.loads(intent.read_text())
        except (json.JSONDecodeError, OSError):
            info = {}
        new = parent / info.get("new", "")
        if info.get("mode") == "exchange":
            # swapped when DST is the new folder: then `new` holds the old output
            if dst.exists() and dst.stat().st_ino == info.get("ino") and new.is_dir() and new != parent:
                shutil.rmtree(new)
        elif info.get("mode") == "rename" and not dst.exists():
            old = parent / info.get("old", "")
            if new.is_dir() and new != parent and not any(new.glob(JOURNAL_GLOB)) and (new / MANIFEST).is_file():
                os.replace(new, dst)  # complete: the journals go just before the rename
            elif old.is_dir() and old != parent:
                os.replace(old, dst)
        intent.unlink()
        _fsync_dir(parent)
    for stale in parent.glob(f"{dst.name}.old-*"):
        if stale.name.rsplit("-", 1)[1].isdigit():  # DST.old-PID: nanokern's own
            shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
    for stale in parent.glob(f"{dst.name}.partial-*"):
        if stale != keep:
            shutil.rmtree(stale, ignore_errors=True)
