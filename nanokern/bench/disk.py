"""The output disk's own speed with one request in flight, for `bench convert` to print beside
the floor: O_DIRECT writes of BLOCK bytes, each issued when the one before has returned (as
`dd if=/dev/zero bs=16M oflag=direct` does), then an fsync. On a local disk this is near the
floor's speed; on a high-latency disk (network, parallel filesystem) it is well below it, and a
writer that keeps one request in flight runs at this speed, not at the floor's."""

from __future__ import annotations

import mmap
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BLOCK = 16 << 20


@dataclass
class Probe:
    mbps: float  # MB/s, one BLOCK write in flight at a time
    direct: bool  # False: the filesystem refused O_DIRECT (tmpfs): buffered writes + fsync instead
    nbytes: int


def qd1_speed(folder: Path, nbytes: int = 256 << 20) -> Probe:
    """Write nbytes into a new temporary file in `folder`, one BLOCK at a time, then remove it."""
    fd_path = tempfile.mkstemp(prefix=".nanokern-qd1-", dir=folder)
    os.close(fd_path[0])
    path = fd_path[1]
    buf = mmap.mmap(-1, BLOCK)  # page-aligned, as O_DIRECT wants
    buf.write(os.urandom(1 << 20) * (BLOCK >> 20))
    direct = hasattr(os, "O_DIRECT")
    try:
        try:
            fd = os.open(path, os.O_WRONLY | (os.O_DIRECT if direct else 0))
        except OSError:
            direct, fd = False, os.open(path, os.O_WRONLY)
        try:
            t0 = time.perf_counter()
            for off in range(0, nbytes, BLOCK):
                os.pwrite(fd, buf, off)
            os.fsync(fd)
            seconds = time.perf_counter() - t0
        finally:
            os.close(fd)
    finally:
        os.unlink(path)
        buf.close()
    return Probe(nbytes / seconds / 1e6, direct, nbytes)
