"""Execute a plan: stream bytes from memory-mapped sources into output files, atomically.

Files are written in parallel threads (write.py: one file front to back), and across processes
under torchrun (split by bytes, distributed.py). The output is built in a `DST.partial-*` folder
beside DST, made durable (durable.py) and renamed into place when complete (replace.py); a
killed run leaves DST untouched and the next identical run reuses the files it had finished
(the journal, manifest.py). Rank 0 holds DST's lock (lock.py) from before the first byte to
after the rename; before anything is written, the bytes still to write are compared with the
free space of DST's filesystem.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanokern.execute import distributed, signals
from nanokern.errors import NanokernError, OutOfSpace
from nanokern.execute import diskspace, durable, manifest, phases, write
from nanokern.execute.batches import Batches
from nanokern.execute import lock as outlock
from nanokern.execute.fill import Sources
from nanokern.execute.replace import check_apart, check_target, recover, replace
from nanokern.ops import resolve_backend
from nanokern.plan import OutFile, Plan


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


def execute(plan: Plan, dst: str | os.PathLike, backend: str = "auto", device: str = "cpu", workers: int | None = None,
            force: bool = False, progress: bool = True, strict: bool = False, staging_bytes: int | None = None,
            direct_io: bool = True, wait: bool = False, on_wait=None) -> Report:
    """Write the plan's output at DST. Under torchrun every rank calls this with the same plan.

    device="cuda": gather and cast on the GPU, staging through pinned buffers of at most
    `staging_bytes` (default 1 GiB). On the CPU, a staging budget runs the same pipeline on
    host tensors (used to test it without a GPU). wait: wait for another conversion holding
    DST's lock instead of refusing.
    """
    dst = Path(dst)
    dist = distributed.init(device)
    rank, world = distributed.world() if dist else (0, 1)
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise NanokernError("--device cuda: no CUDA device is available", dst)
    backend = resolve_backend(backend, device)
    work = manifest.partial_dir(dst, manifest.plan_fingerprint(plan))
    with contextlib.ExitStack() as held:
        with phases.span("prepare"):
            _prepare(plan, dst, work, rank, dist, force, lambda: held.enter_context(outlock.hold(dst, wait=wait, on_wait=on_wait)))
        stager = None
        if device == "cuda" or staging_bytes is not None:
            from nanokern.execute.staging import Stager

            stager = lambda n: Stager(device, (staging_bytes or 1 << 30) // n, backend)  # noqa: E731
        report = _Run(plan, dst, work, backend, dist, rank, world).go(workers, progress, strict, stager, direct_io)
    phases.dump()  # (NANOKERN_PHASES only: bench convert's breakdown)
    return report


def _prepare(plan: Plan, dst: Path, work: Path, rank: int, dist, force: bool, take_lock) -> None:
    """Rank 0: the lock, recovery of what a killed run left, the checks; every rank: the verdict."""
    error = None
    try:
        if plan.source.path and Path(plan.source.path).exists():  # (a source held in memory has no folder)
            check_apart(plan.source.path, dst)
        if rank == 0:
            dst.parent.mkdir(parents=True, exist_ok=True)
            take_lock()
            recover(dst, keep=work)
        check_target(dst, force)
        if rank == 0:
            resume = work.exists() or work.is_symlink()
            if resume and manifest.work_token(work) is None:
                raise NanokernError(f"exists and was not made by nanokern; nanokern needs this name for the "
                                    f"partial output of {dst.name}: move it away", work)
            reusable = manifest.finished(work, plan) if resume else {}
            # an unfinished file left by an interrupted run is rewritten in place: its blocks count as free
            diskspace.check_fits(dst, [max(0, f.size - durable.allocated(work / f.path)) for f in plan.files
                                       if f.path not in reusable] + [len(d) for d in plan.aux.values()])
            if not resume:
                manifest.make_work(work)
    except NanokernError as e:
        error = e
    if dist:
        shared = [None if error is None else (str(error), isinstance(error, OutOfSpace))]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None and error is None:
            error = (OutOfSpace if shared[0][1] else NanokernError)(shared[0][0])
        if error is None:
            blind = manifest.seen_by_all(work, lambda o: distributed.gather(dist, o))
            if blind is not None:
                error = NanokernError(blind)
                if rank == 0 and [p.name for p in work.iterdir()] == [manifest.MARKER]:
                    shutil.rmtree(work)  # (made by this run, nothing written in it yet)
    if error is not None:
        raise error


class _Run:
    """One rank's share of the files: written by worker threads, made durable in batches and
    journaled as they finish; on success rank 0 finishes the folder and renames it into place."""

    def __init__(self, plan: Plan, dst: Path, work: Path, backend: str, dist, rank: int, world: int):
        self.plan, self.dst, self.work, self.backend = plan, dst, work, backend
        self.dist, self.rank, self.world = dist, rank, world
        done = manifest.finished(work, plan)
        self.mine = [plan.files[i] for i in distributed.split_by_bytes([f.size for f in plan.files], world)[rank]]
        self.todo = sorted((f for f in self.mine if f.path not in done), key=lambda f: -f.size)
        self.entries = {p: e for p, e in done.items() if p in {f.path for f in self.mine}}  # durable, journaled
        self.batched = durable.batched()
        self.lock = threading.RLock()  # (the progress bar) re-entrant: a signal may arrive while the main thread holds it
        self.stop = threading.Event()  # set on the first error or signal: the other writers stop at their next chunk
        self.sources = Sources()
        self.bar = None

    def go(self, workers, progress, strict, stager, direct) -> Report:
        workers = max(1, workers or min(4, os.cpu_count() or 1, max(1, len(self.todo))))
        report = Report(backend=self.backend, workers=workers, processes=self.world,
                        reused_files=len(self.mine) - len(self.todo))
        self.opts = dict(stager=stager(workers) if stager else None, direct=direct, chunk=write.CHUNK_BYTES, phases=phases.ACTIVE)
        self.strict = strict
        t0 = time.perf_counter()
        if progress and self.rank == 0 and sys.stderr.isatty():  # not in a log file (Slurm's, a pipe)
            from tqdm.auto import tqdm

            # decimal units (GB = 10^9 bytes), as every size nanokern prints (io/units.py)
            self.bar = tqdm(total=sum(f.size for f in self.mine), unit="B", unit_scale=True, unit_divisor=1000, leave=False,
                            desc="convert" if self.world == 1 else f"convert (rank 0 of {self.world})")
            self.bar.update(sum(f.size for f in self.mine) - sum(f.size for f in self.todo))
        with signals.raising():  # from here a signal raises Interrupted: the finished files are kept
            with phases.span("writing"):
                error = self._write_all(workers)
            self._finish(error)
        report.seconds = time.perf_counter() - t0
        report.files, report.tensors = len(self.plan.files), self.plan.num_tensors
        report.bytes = sum(f.size for f in self.plan.files)
        report.nonfinite = [f"{p}: {n}" for p, e in sorted(self.entries.items()) for n in e["nonfinite"]]
        return report

    def _tick(self, n: int) -> None:
        if self.bar:
            with self.lock:
                self.bar.update(n)

    def _write_one(self, f: OutFile, batches: Batches) -> None:
        if self.stop.is_set():
            return
        target = self.work / f.path
        try:
            entry = write.write_file(f, target, self.sources, self.backend, self._tick, cancel=self.stop,
                               fsync=not self.batched, **self.opts)
        except OSError as e:
            if e.errno in diskspace.NO_SPACE:
                raise OutOfSpace("no space left on the device while writing it", target) from None
            raise
        if self.strict and entry["nonfinite"]:
            raise NanokernError(f"non-finite values (NaN/inf) in {', '.join(entry['nonfinite'][:3])} (--strict)",
                                self.plan.source.path)
        batches.finished(f.path, entry)

    def _write_all(self, workers: int) -> Exception | None:
        """Write this rank's files; the error that stopped it (None: all written)."""
        batches = Batches(self.work, self.rank, self.entries)  # (entries: updated as files become durable)
        try:
            for d in sorted({(self.work / f.path).parent for f in self.todo}):
                d.mkdir(parents=True, exist_ok=True)
            if workers == 1:
                for f in self.todo:
                    self._write_one(f, batches)
            else:
                from concurrent.futures import ThreadPoolExecutor  # (imported only when needed: start-up)

                with ThreadPoolExecutor(workers) as pool:
                    try:
                        for fut in [pool.submit(self._write_one, f, batches) for f in self.todo]:
                            fut.result()
                    except BaseException:
                        self.stop.set()
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise
            batches.close()
        except signals.Interrupted as e:  # keep the finished files: the same command resumes
            batches.close()
            e.kept, e.total, e.work = len(self.entries), len(self.mine), str(self.work)
            raise
        except KeyboardInterrupt:
            raise  # keep the finished files: the next run resumes
        except OutOfSpace as e:  # keep the finished files for a resume; drop the unfinished ones
            for f in self.todo:
                if not batches.known(f.path):
                    (self.work / f.path).unlink(missing_ok=True)  # frees room for the journal
            with contextlib.suppress(OSError):
                batches.close()
            return OutOfSpace(f"{e.message}; the {len(self.entries)} finished file(s) are kept in {self.work}: "
                              f"free space and run the same command to resume", e.path)
        except Exception as e:  # noqa: BLE001 - reported, and shared with the other ranks
            return e  # (the files are removed)
        finally:
            batches.stop()  # (on every path: no sync thread outlives the run)
            self.sources.close()
            if self.bar:
                self.bar.close()
        return None

    def _finish(self, error: Exception | None) -> None:
        keep = isinstance(error, OutOfSpace)
        if self.dist:
            gathered = [None] * self.world
            self.dist.all_gather_object(gathered, (None if error is None else str(error), keep, self.entries))
            failed = [(r, msg, k) for r, (msg, k, _) in enumerate(gathered) if msg is not None]
            if failed and error is None:
                r, msg, keep = failed[0]
                error = (OutOfSpace if keep else NanokernError)(f"rank {r} failed: {msg}")
            if not failed:
                for _, _, e in gathered:
                    self.entries.update(e)
        if error is not None:
            if self.rank == 0 and not keep:
                shutil.rmtree(self.work, ignore_errors=True)
            if self.dist:
                self.dist.barrier()
            raise error
        if self.rank == 0:
            with signals.deferred(str(self.dst)):
                _complete(self.plan, self.work, self.dst, self.entries, self.batched)
            signals.completed(str(self.dst))  # DST is in place: a signal from now on (the barrier) says so
        if self.dist:
            self.dist.barrier()


def _complete(plan: Plan, work: Path, dst: Path, entries: dict, batched: bool) -> None:
    """Configs and manifest, everything durable, then into place (rank 0; signals deferred)."""
    try:
        with phases.span("finish"):
            for name, data in plan.aux.items():
                durable.write_small(work / name, data, fsync=not batched)
            manifest.write_manifest(work, plan, entries, fsync=not batched)
    except OSError as e:
        if e.errno in diskspace.NO_SPACE:
            raise OutOfSpace(f"no space left on the device while writing it; the {len(entries)} finished file(s) "
                             f"are kept in {work}: free space and run the same command to resume",
                             e.filename) from None
        raise
    manifest.drop_journals(work)
    with phases.span("sync"):
        if batched:
            durable.syncfs(work)  # every file, config, the manifest and every folder, at once
        else:
            for d in {work, *[(work / f.path).parent for f in plan.files]}:
                durable.fsync_dir(d)
    with phases.span("rename"):
        replace(work, dst)
