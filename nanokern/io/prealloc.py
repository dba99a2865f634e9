"""Reserving a file's blocks before it is written: fallocate(2) itself, never glibc's emulation."""

from __future__ import annotations

import functools


@functools.cache
def _native_fallocate():
    """fallocate(2) itself (Linux): None where libc has none. (ctypes imported on first use: start-up)"""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate64 if hasattr(libc, "fallocate64") or ctypes.sizeof(ctypes.c_long) < 8 else libc.fallocate
    except (AttributeError, OSError, TypeError):  # (not Linux)
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fn


def preallocate(fd: int, nbytes: int) -> bool:
    """Reserve a file's blocks before writing it (contiguous extents; a full disk noticed here)
    where the filesystem does so natively; nothing where it cannot (False). Never glibc's
    posix_fallocate: on a filesystem without fallocate (a FUSE mount, say) it emulates one by
    writing a byte into every 4 KiB block, one round trip each, bytes the writer then overwrites
    (64 MB: 1.3 s through a FUSE passthrough of the local disk, against 0.3 ms natively; the
    1 GB HF -> TP2xPP2 import there: 8.7-11.3 s, then about 1.3 s without it)."""
    fn = _native_fallocate()
    return fn is not None and fn(fd, 0, 0, nbytes) == 0  # (mode 0: allocate and extend the size, as posix_fallocate)
