"""Sequential file writing at the disk's speed: O_DIRECT from reused, page-aligned buffers.

The producer (a conversion worker) fills one buffer with the next bytes of the file while
`depth` writer threads pwrite the buffers filled before, straight to the device (O_DIRECT: no
page-cache fill now and no writeback storm at fsync). Each buffer is written up to its last
4 KiB boundary and the remainder carried into the next; the last block is zero-padded and the
file truncated to its size. Where O_DIRECT is refused (tmpfs, some FUSE mounts) or not wanted,
the same pipeline uses ordinary pwrite. Memory: (depth + 1) buffers, reused across files.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading

import torch

ALIGN = 4096


class _Pool(threading.local):
    """Per producer thread: page-aligned anonymous buffers, faulted in once and reused."""

    def take(self, count: int, nbytes: int) -> list[mmap.mmap]:
        maps = getattr(self, "maps", [])
        if len(maps) < count or len(maps[0]) < nbytes:
            for m in maps:
                m.close()
            # private anonymous memory: counted in RssAnon, like any other buffer of the process
            maps = self.maps = [mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) for _ in range(count)]
        return maps[:count]


_pool = _Pool()


class SequentialWriter:
    """Write a file front to back through `region(n)` / `advance(n)`, then `close()`."""

    def __init__(self, path, size: int, chunk: int = 16 << 20, max_region: int = 0, depth: int = 4, direct: bool = True):
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
        try:
            os.posix_fallocate(self.fd, 0, max(1, -(-size // ALIGN) * ALIGN))
        except OSError:
            pass
        self.size = size
        self.closed = False
        self.chunk = max(ALIGN, min(chunk, -(-size // ALIGN) * ALIGN))
        cap = -(-(self.chunk + max_region + 2 * ALIGN) // ALIGN) * ALIGN
        self.maps = _pool.take(depth + 1, cap)
        self.bufs = [torch.frombuffer(m, dtype=torch.uint8) for m in self.maps]
        self.free: queue.Queue = queue.Queue()
        for i in range(1, depth + 1):
            self.free.put(i)
        self.cur, self.fill, self.base = 0, 0, 0  # buffer being filled, bytes in it, its file offset
        self.jobs: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._write_jobs, daemon=True) for _ in range(depth)]
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
                    view = memoryview(self.maps[i])[:n]
                    while view:
                        k = os.pwrite(self.fd, view, off)
                        view, off = view[k:], off + k
            except OSError as e:
                self.error = e
            self.free.put(i)

    def region(self, nbytes: int) -> torch.Tensor:
        """A uint8 view of the next `nbytes` of the file, to fill before `advance(nbytes)`."""
        if self.fill + nbytes > len(self.maps[self.cur]):
            raise ValueError(f"region of {nbytes} bytes exceeds the staging buffer")
        return self.bufs[self.cur][self.fill : self.fill + nbytes]

    def advance(self, nbytes: int) -> None:
        self.fill += nbytes
        if self.fill >= self.chunk:
            self._submit(final=False)

    def _submit(self, final: bool) -> None:
        n = self.fill if final else self.fill - self.fill % ALIGN
        if final and self.direct:
            padded = -(-n // ALIGN) * ALIGN
            self.bufs[self.cur][n:padded].zero_()
            n = padded
        tail = 0 if final else self.fill - n
        nxt = self.free.get()  # a buffer no writer is using
        if self.error is not None:
            raise self.error
        if tail:
            self.bufs[nxt][:tail].copy_(self.bufs[self.cur][n : n + tail])
        self.jobs.put((self.cur, n, self.base))
        self.base += n
        self.cur, self.fill = nxt, tail

    def _stop(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join()

    def close(self) -> None:
        """Write what is left, truncate to size, fsync, close."""
        try:
            self._submit(final=True)
            self._stop()
            if self.error is not None:
                raise self.error
            os.ftruncate(self.fd, self.size)
            os.fsync(self.fd)
        finally:
            self.closed = True
            os.close(self.fd)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._stop()
            os.close(self.fd)
