"""Sequential file writing at the disk's speed: O_DIRECT from reused, page-aligned buffers.

The producer (a conversion worker) fills one buffer with the next bytes of the file while
`depth` writer threads pwrite the buffers filled before, straight to the device (O_DIRECT: no
page-cache fill now and no writeback storm at fsync). Each buffer is written up to its last
4 KiB boundary and the remainder carried into the next; the last block is zero-padded and the
file truncated to its size. Where O_DIRECT is refused (tmpfs, some FUSE mounts) or not wanted,
the same pipeline uses ordinary pwrite. Memory: (depth + 1) buffers, reused across files.

The first buffers are small and each next one twice as large, up to `chunk`, so that the disk
starts writing within milliseconds rather than after a whole chunk has been produced. Work that
only reads a filled buffer (checksums, NaN scans: `check(fn)`) runs on one checker thread, in
submission order, while the buffer is being written, off the producer's critical path; a
buffer is reused once both its write and its checks are done.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import threading
import time

import numpy as np

from nanokern.io.prealloc import preallocate
from nanokern.io.safetensors import close_maps

ALIGN = 4096
FIRST_CHUNK = 4 << 20  # the ramp's first buffer: small, so the disk has work almost at once
HUGE_PAGE = 2 << 20  # a transparent huge page (x86-64, and arm64 with 4 KiB pages)


def _staging(nbytes: int) -> tuple[mmap.mmap, memoryview]:
    """nbytes of private anonymous memory (counted in RssAnon, like any other buffer of the
    process) that start on a 2 MiB boundary and are advised to transparent huge pages. Each
    O_DIRECT request then carries a few physically contiguous segments instead of one per 4 KiB
    page. A block device caps the segments of a request (virtio-blk: 254): on a virtio disk, 16
    writes of 16 MB went out as 476 requests of 551 KiB on average from small pages, as 64 of
    4 MiB from huge pages, and a whole 1 GB import wrote in 0.41-0.44 s instead of 0.56-0.60 s.
    Where huge pages are off or unavailable, the same buffer is made of small pages."""
    m = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    with contextlib.suppress(AttributeError, OSError):  # no MADV_HUGEPAGE (not Linux): small pages
        m.madvise(mmap.MADV_HUGEPAGE)
    start = -np.frombuffer(m, np.uint8).ctypes.data % HUGE_PAGE  # (the temporary view is gone at once)
    return m, memoryview(m)[start : start + nbytes]


class _Pool(threading.local):
    """Per producer thread: page-aligned buffers (_staging), faulted in once and reused. Sizes are
    rounded up to whole huge pages, so that the next file's buffers are nearly always these."""

    def take(self, count: int, nbytes: int) -> list[memoryview]:
        views = getattr(self, "views", [])
        if len(views) < count or len(views[0]) < nbytes:
            nbytes = -(-nbytes // HUGE_PAGE) * HUGE_PAGE
            maps, self.views = getattr(self, "maps", []), []
            for v in views:
                with contextlib.suppress(BufferError):  # a numpy view still held (by a traceback, say):
                    v.release()  # then the map is unmapped when that view goes
            close_maps(maps)
            self.maps, self.views = map(list, zip(*[_staging(nbytes) for _ in range(count)]))
        return self.views[:count]


_pool = _Pool()


class SequentialWriter:
    """Write a file front to back through `region(n)` / `advance(n)`, then `close()`."""

    def __init__(self, path, size: int, chunk: int = 16 << 20, max_region: int = 0, depth: int = 4, direct: bool = True,
                 first_chunk: int = FIRST_CHUNK):
        self.direct = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        if direct and hasattr(os, "O_DIRECT"):
            try:
                self.fd = os.open(path, flags | os.O_DIRECT, 0o644)
                self.direct = True
            except OSError:
                pass
        if not self.direct:
            self.fd = os.open(path, flags, 0o644)
        preallocate(self.fd, max(1, -(-size // ALIGN) * ALIGN))
        self.size = size
        self.closed = False
        self.chunk = max(ALIGN, min(chunk, -(-size // ALIGN) * ALIGN))
        cap = -(-(self.chunk + max_region + 2 * ALIGN) // ALIGN) * ALIGN
        self.views = _pool.take(depth + 1, cap)
        self.bufs = [np.frombuffer(m, dtype=np.uint8) for m in self.views]
        self.free: queue.Queue = queue.Queue()
        for i in range(1, depth + 1):
            self.free.put(i)
        self.cur, self.fill, self.base = 0, 0, 0  # buffer being filled, bytes in it, its file offset
        self.target = min(self.chunk, max(ALIGN, first_chunk))  # submit at this fill; doubles per buffer
        self.checks: list[list] = [[] for _ in self.views]  # per buffer: callables to run once it is filled
        self.busy = [0] * len(self.views)  # per buffer: its write and its checks not yet done
        self.busy_lock = threading.Lock()
        self.jobs: queue.Queue = queue.Queue()
        self.check_jobs: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.io = [0, 0, 0.0, 0.0]  # writes, bytes, seconds in pwrite, bytes x seconds (bench convert: in flight)
        self.threads = [threading.Thread(target=self._write_jobs, daemon=True) for _ in range(depth)]
        self.threads.append(threading.Thread(target=self._check_jobs, daemon=True))
        for t in self.threads:
            t.start()

    @property
    def offset(self) -> int:
        """File offset of the next region."""
        return self.base + self.fill

    def _write_jobs(self) -> None:
        while (job := self.jobs.get()) is not None:
            i, n, off = job
            try:
                if self.error is None:
                    t0 = time.perf_counter()
                    view = self.views[i][:n]
                    while view:
                        k = os.pwrite(self.fd, view, off)
                        view, off = view[k:], off + k
                    t = time.perf_counter() - t0
                    with self.busy_lock:
                        io = self.io
                        io[0], io[1], io[2], io[3] = io[0] + 1, io[1] + n, io[2] + t, io[3] + n * t
            except BaseException as e:  # noqa: BLE001 - re-raised in the producer
                self.error = e
            self._release(i)

    def _check_jobs(self) -> None:
        while (job := self.check_jobs.get()) is not None:
            i, fns = job
            try:
                if self.error is None:
                    for fn in fns:
                        fn()
            except BaseException as e:  # noqa: BLE001 - re-raised in the producer
                self.error = e
            self._release(i)

    def _release(self, i: int) -> None:
        with self.busy_lock:
            self.busy[i] -= 1
            if self.busy[i] == 0:
                self.free.put(i)

    @property
    def room(self) -> int:
        """Bytes to produce before the current buffer is handed to the writers."""
        return max(0, self.target - self.fill)

    def check(self, fn) -> None:
        """Run fn() on the checker thread once the current buffer is submitted (so after
        everything filled so far is final), in submission order; fn only reads the buffer."""
        self.checks[self.cur].append(fn)

    def region(self, nbytes: int) -> np.ndarray:
        """A uint8 view of the next `nbytes` of the file, to fill before `advance(nbytes)`."""
        if self.fill + nbytes > len(self.views[self.cur]):
            raise ValueError(f"region of {nbytes} bytes exceeds the staging buffer")
        return self.bufs[self.cur][self.fill : self.fill + nbytes]

    def advance(self, nbytes: int) -> None:
        self.fill += nbytes
        if self.fill >= self.target:
            self._submit(final=False)
            self.target = min(self.chunk, self.target * 2)

    def _submit(self, final: bool) -> None:
        n = self.fill if final else self.fill - self.fill % ALIGN
        if final and self.direct:
            padded = -(-n // ALIGN) * ALIGN
            self.bufs[self.cur][n:padded] = 0
            n = padded
        tail = 0 if final else self.fill - n
        nxt = self.free.get()  # a buffer no writer is using
        if self.error is not None:
            raise self.error
        if tail:
            self.bufs[nxt][:tail] = self.bufs[self.cur][n : n + tail]
        self.busy[self.cur] = 2
        self.jobs.put((self.cur, n, self.base))
        self.check_jobs.put((self.cur, self.checks[self.cur]))
        self.checks[self.cur] = []
        self.base += n
        self.cur, self.fill = nxt, tail

    def _stop(self) -> None:
        for _ in self.threads[:-1]:
            self.jobs.put(None)
        self.check_jobs.put(None)
        for t in self.threads:
            t.join()

    def close(self, fsync: bool = True) -> None:
        """Write what is left, truncate to size, fsync (unless the caller makes the file durable
        another way, e.g. one syncfs for many files), close."""
        try:
            try:
                self._submit(final=True)
            finally:
                self._stop()  # on every path: no thread left waiting, none writing after the fd closes
            if self.error is not None:
                raise self.error
            os.ftruncate(self.fd, self.size)
            if fsync:
                os.fsync(self.fd)
        finally:
            self.closed = True
            os.close(self.fd)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._stop()
            os.close(self.fd)


class _SmallPool(threading.local):
    def take(self, nbytes: int) -> np.ndarray:
        buf = getattr(self, "buf", None)
        if buf is None or buf.size < nbytes:
            buf = self.buf = np.empty(max(nbytes, 1 << 20), dtype=np.uint8)
        return buf


_small_pool = _SmallPool()


class SmallFileWriter:
    """SequentialWriter's interface for a file small enough to build whole in memory (at most
    about the first buffer of SequentialWriter's ramp, where its writer threads would have
    nothing to overlap): no threads, one buffered write, checks run at once. Starting and
    joining three threads per file cost more than writing a file of a few hundred KB."""

    def __init__(self, path, size: int):
        self.path = path
        self.size = size
        self.buf = _small_pool.take(size)
        self.fill = 0
        self.closed = False

    @property
    def offset(self) -> int:
        return self.fill

    @property
    def room(self) -> int:
        return self.size - self.fill

    def region(self, nbytes: int) -> np.ndarray:
        if self.fill + nbytes > self.size:
            raise ValueError(f"region of {nbytes} bytes exceeds the file size")
        return self.buf[self.fill : self.fill + nbytes]

    def check(self, fn) -> None:
        fn()  # the region is filled: nothing else will write to it

    def advance(self, nbytes: int) -> None:
        self.fill += nbytes

    def close(self, fsync: bool = True) -> None:
        self.closed = True
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(self.buf)[: self.fill]
            off = 0
            while off < len(view):
                off += os.pwrite(fd, view[off:], off)
            os.ftruncate(fd, self.size)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def abort(self) -> None:
        self.closed = True
