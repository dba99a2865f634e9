"""One conversion at a time per output: an flock on `OUT.lock` beside OUT, holder written inside.

A second run for the same OUT refuses at once with one line naming the holder (pid, host,
since when), or, with wait=True, blocks until the holder is done. The lock file is removed by
its holder on release; a waiter that got the lock on a file that was meanwhile removed (or
replaced) retries on the new one, so two processes never both hold it. Within one process the
lock is re-entrant (the CLI takes it before planning, execute() again around the writing).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from nanokern.errors import NanokernError

_held: dict[str, list] = {}  # lock path -> [fd, depth], for this process
_guard = threading.Lock()


def lock_path(dst: str | os.PathLike) -> Path:
    dst = Path(os.path.abspath(dst))
    return dst.parent / f"{dst.name}.lock"


def holder(fd: int) -> str:
    """The line the holder of the lock on fd wrote (write_holder), or "another process"."""
    for _ in range(20):  # the holder writes its line right after it gets the lock
        data = os.pread(fd, 512, 0).decode(errors="replace").strip()
        if data:
            return data
        time.sleep(0.01)
    return "another process"


def _acquire(path: Path, dst, wait: bool, on_wait) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                who = holder(fd)
                if not wait:
                    raise NanokernError(f"in use by {who} (another conversion writes this output; "
                                        f"--wait to wait for it)", dst) from None
                if on_wait:
                    on_wait(f"waiting for {who} ({path})")
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous holder removed the file we locked: lock the current one
                os.close(fd)
                continue
            write_holder(fd)
            return fd
        except BaseException:
            try:
                os.close(fd)
            except OSError:
                pass
            raise


def write_holder(fd: int) -> None:
    """Say who holds the lock on fd: pid, host, since when (what a refused second run prints)."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)


@contextmanager
def hold(dst: str | os.PathLike, wait: bool = False, on_wait=None):
    """Hold the lock of output `dst` for the duration of the block."""
    path = lock_path(dst)
    key = str(path)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        from nanokern.execute import signals

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(path, dst, wait, on_wait)
        with _guard:
            entry = _held[key] = [fd, 1, signals.at_quick_exit(lambda: os.unlink(path))]
    try:
        yield path
    finally:
        with _guard:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _held[key]
        if last:
            from nanokern.execute import signals

            signals.forget(entry[2])
            try:
                os.unlink(path)  # while still holding it: a waiter re-checks the inode
            except FileNotFoundError:
                pass
            os.close(entry[0])
