"""Making output durable: fsync of files and folders, one syncfs(2) for many files, small files
written whole.

DURABILITY "syncfs": output files are closed without an fsync each; finished files are made
durable together by one syncfs of the output's filesystem, on a thread of its own (batches.py:
once SYNC_BYTES or SYNC_EVERY seconds of finished files are pending, and once at the end for
the files, configs, manifest and folders), and only then journaled as finished, so a resume
never trusts a file that is not on disk. "fsync": one fsync per file and per folder
(benchmarks/bench_durability.py compares them).

A batch sync costs what the disk's journal commit and cache flush cost: a few milliseconds on a
local disk, several round trips (hundreds of ms) on a high-latency one, where back-to-back syncs
also hold the writers up. So the next batch is never due before SYNC_SPACING times the last
sync's own duration has passed since it returned (batch_due): the syncs take at most about a
tenth of the run whatever the disk, and on a slow disk files are journaled in fewer, larger
batches (a killed run then resumes from a little further back; the final sync is not spaced)."""

from __future__ import annotations

import os
from pathlib import Path

DURABILITY = "syncfs"
SYNC_BYTES = 16 << 20
SYNC_EVERY = 1.0
SYNC_SPACING = 9.0  # (the syncs take at most a tenth of the time)


def batch_due(pending_bytes: int, since_last: float, last_cost: float) -> bool:
    """Whether a batch sync is due: pending_bytes of finished files wait, since_last seconds after
    the last sync returned, which took last_cost seconds (0: none yet)."""
    if since_last < last_cost * SYNC_SPACING:
        return False
    return since_last >= SYNC_EVERY or pending_bytes >= SYNC_BYTES


def batched() -> bool:
    return DURABILITY == "syncfs"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_small(path: Path, data: bytes, fsync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())


def syncfs(path: Path) -> None:
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


def allocated(path: Path) -> int:
    """Bytes the filesystem holds for a file (0 when it does not exist)."""
    try:
        return path.stat().st_blocks * 512
    except (FileNotFoundError, NotADirectoryError):
        return 0
