"""Execute a plan: stream bytes from memory-mapped sources into output files, atomically.

Every output file's header is known from the plan, so each file is created at full size, its
header written, and every tensor's bytes written in place (through a shared mapping of the
output file) by the fused gather_cast kernel reading the memory-mapped sources: no
intermediate copy of a tensor, no save_file. Files are written in parallel. The output is
built in a `DST.partial-*` folder beside DST, fsynced, and renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nanokern.errors import NanokernError
from nanokern.formats.safetensors_io import map_tensor
from nanokern.plan import OutFile, Plan

JOURNAL = ".nanokern-done.json"


@dataclass
class Report:
    files: int = 0
    tensors: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reused_files: int = 0
    backend: str = ""
    workers: int = 1
    warnings: list[str] = field(default_factory=list)

    @property
    def gbps(self) -> float:
        return self.bytes / self.seconds / 1e9 if self.seconds > 0 else 0.0


def plan_fingerprint(plan: Plan) -> str:
    """Identifies a plan's output bytes, so an interrupted run resumes only the same plan."""
    h = hashlib.sha256()
    for f in plan.files:
        h.update(f.path.encode() + f.header)
        for t in f.tensors:
            for p in t.pieces:
                st = os.stat(p.ref.path)
                h.update(f"{p.ref.path}:{st.st_size}:{st.st_mtime_ns}:{p.ref.offset}:{p.row0}:{p.nrows}:{p.col0}:{p.ncols}:{p.dst_row0}:{p.dst_col0}".encode())
                if p.rows is not None:
                    h.update(p.rows.tobytes())
    for name in sorted(plan.aux):
        h.update(name.encode() + hashlib.sha256(plan.aux[name]).digest())
    return h.hexdigest()[:16]


class _Sources:
    """Memory maps of source files, opened once and shared by the worker threads."""

    def __init__(self):
        self._maps: dict[str, mmap.mmap] = {}
        self._lock = threading.Lock()

    def tensor(self, ref) -> torch.Tensor:
        with self._lock:
            return map_tensor(ref, self._maps)

    def close(self):
        for m in self._maps.values():
            if m is not None:
                m.close()
        self._maps.clear()


def write_file(f: OutFile, path: Path, sources: _Sources, backend: str, device: str, on_tensor=None) -> None:
    from nanokern.ops import gather_cast

    with open(path, "w+b") as fh:
        fh.truncate(f.size)  # zero-filled: rows no piece covers (vocab padding) stay zero
        fh.write(f.header)
        fh.flush()
        with mmap.mmap(fh.fileno(), f.size, access=mmap.ACCESS_WRITE) as out_map:
            for t in f.tensors:
                rows, cols = t.shape2d
                if rows * cols:
                    out = torch.frombuffer(out_map, dtype=t.dtype, count=rows * cols, offset=t.offset).view(rows, cols)
                    for p in t.pieces:
                        src = sources.tensor(p.ref)[:, p.col0 : p.col0 + p.ncols]
                        dst = out[p.dst_row0 : p.dst_row0 + p.nrows, p.dst_col0 : p.dst_col0 + p.ncols]
                        if p.rows is None:
                            gather_cast(src[p.row0 : p.row0 + p.nrows], None, dst, backend=backend)
                        else:
                            gather_cast(src, torch.from_numpy(p.rows), dst, backend=backend)
                    del out
                if on_tensor:
                    on_tensor(t.nbytes)
            out_map.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def partial_dir(dst: Path, fingerprint: str) -> Path:
    return dst.parent / f"{dst.name}.partial-{fingerprint}"


def execute(
    plan: Plan,
    dst: str | os.PathLike,
    backend: str = "auto",
    device: str = "cpu",
    workers: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> Report:
    from nanokern.ops import resolve_backend

    dst = Path(dst)
    if dst.exists() and not force:
        raise NanokernError("output exists (use --force to replace it)", dst)
    backend = resolve_backend(backend, device)
    workers = max(1, workers or min(4, os.cpu_count() or 1, len(plan.files)))
    dst.parent.mkdir(parents=True, exist_ok=True)
    fp = plan_fingerprint(plan)
    work = partial_dir(dst, fp)
    for stale in dst.parent.glob(f"{dst.name}.partial-*"):
        if stale != work:
            shutil.rmtree(stale, ignore_errors=True)
    work.mkdir(exist_ok=True)
    journal = work / JOURNAL
    done: set[str] = set(json.loads(journal.read_text())) if journal.is_file() else set()
    report = Report(backend=backend, workers=workers, warnings=list(plan.warnings))
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(f.size for f in plan.files), unit="B", unit_scale=True, unit_divisor=1024, desc="convert", leave=False)
    lock = threading.Lock()
    todo = []
    for f in plan.files:
        if f.path in done and (work / f.path).is_file() and (work / f.path).stat().st_size == f.size:
            report.reused_files += 1
            if bar:
                bar.update(f.size)
        else:
            todo.append(f)

    def tick(n):
        if bar:
            with lock:
                bar.update(n)

    def run(f: OutFile):
        target = work / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        write_file(f, target, sources, backend, device, tick)
        tick(len(f.header))
        with lock:
            done.add(f.path)
            tmp = journal.with_suffix(".tmp")
            tmp.write_text(json.dumps(sorted(done)))
            os.replace(tmp, journal)

    sources = _Sources()
    try:
        # biggest files first: better balance across workers
        order = sorted(todo, key=lambda f: -f.size)
        if workers == 1:
            for f in order:
                run(f)
        else:
            with ThreadPoolExecutor(workers) as pool:
                for fut in [pool.submit(run, f) for f in order]:
                    fut.result()
        for name, data in plan.aux.items():
            p = work / name
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        journal.unlink(missing_ok=True)
        for d in {work, *[(work / f.path).parent for f in plan.files]}:
            _fsync_dir(d)
        _replace(work, dst)
    except BaseException as e:
        # an interrupted run keeps its finished files for the next run to reuse; a failed one
        # leaves nothing behind
        if not isinstance(e, KeyboardInterrupt):
            shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        sources.close()
        if bar:
            bar.close()
    report.seconds = time.perf_counter() - t0
    report.files = len(plan.files)
    report.tensors = plan.num_tensors
    report.bytes = sum(f.size for f in plan.files)
    return report


def _replace(work: Path, dst: Path) -> None:
    if dst.exists() or dst.is_symlink():
        old = dst.parent / f"{dst.name}.old-{os.getpid()}"
        os.replace(dst, old)
        os.replace(work, dst)
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    else:
        os.replace(work, dst)
    _fsync_dir(dst.parent)
