"""Lock files: one conversion at a time per output (`OUT.lock` beside OUT), one watch per OUT_ROOT.

A lock is an flock on a file whose only content is the holder's line (pid, host, since when).
The file is made whole before anyone can see it: written and locked under a private name, then
linked to its name (link(2) never replaces), so a lock file is never seen empty or unlocked
while its holder lives. The holder removes it on release.

A file already at the name is opened without following a symlink and without truncating it:
- locked: another process holds it; refuse at once naming the holder (or, with wait=True,
  block until it is released; the holder removes the file, and the waiter starts over);
- unlocked, holding exactly a holder's line: a lock whose holder was killed; removed and taken;
- anything else (a user's file, a symlink, a FIFO): never touched; one error naming it.
Within one process a lock is re-entrant (the CLI takes it before planning, execute() again
around the writing).
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from nanokern.errors import NanokernError

_held: dict[str, list] = {}  # lock path -> [fd, depth, quick-exit key], for this process
_guard = threading.Lock()
_LINE = re.compile(rb"pid [0-9]+ on \S* since [0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\n")
_BUSY = (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
_NO_LINK = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV)
NEEDED = "nanokern needs this name for its lock file: move it away"


def lock_path(dst: str | os.PathLike) -> Path:
    dst = Path(os.path.abspath(dst))
    return dst.parent / f"{dst.name}.lock"


def holder(fd: int) -> str:
    """The line the holder of the lock on fd wrote, or "another process"."""
    data = os.pread(fd, 512, 0).decode(errors="replace").strip()
    return data or "another process"


def _line() -> bytes:
    return f"pid {os.getpid()} on {os.uname().nodename} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode()


def _create(path: Path) -> int | None:
    """A new lock file at path, locked and naming this process; None if something is there."""
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    linked = False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, _line())
        try:
            os.link(tmp, path, follow_symlinks=False)
            linked = True
        except FileExistsError:
            return None
        except OSError as e:
            if e.errno not in _NO_LINK:
                raise
    finally:
        os.unlink(tmp)
        if not linked:
            os.close(fd)
    if not linked:  # a filesystem without hard links: created in place (seen empty for an instant)
        return _create_in_place(path)
    return fd


def _create_in_place(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        return None
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, _line())
    return fd


def _open_existing(path: Path) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None  # released meanwhile
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NanokernError(f"is a symlink, not a lock nanokern wrote; {NEEDED}", path) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NanokernError(f"is not a regular file, not a lock nanokern wrote; {NEEDED}", path)
    return fd


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _acquire(path: Path, busy: str, name, wait: bool, on_wait) -> int:
    empty_since = None
    while True:
        fd = _create(path)
        if fd is not None:
            return fd
        fd = _open_existing(path)
        if fd is None:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno not in _BUSY:
                    raise
                who = holder(fd)
                if not wait:
                    raise NanokernError(busy.format(who=who, path=path), name) from None
                if on_wait:
                    on_wait(f"waiting for {who} ({path})")
                    on_wait = None
                fcntl.flock(fd, fcntl.LOCK_EX)
            if not _same_file(fd, path):
                continue  # its holder released (and removed) it meanwhile: start over
            data = os.pread(fd, 4096, 0)
            if data == b"":  # (a filesystem without hard links: its creator may not have written yet)
                empty_since = empty_since or time.monotonic()
                if time.monotonic() - empty_since < 1.0:
                    time.sleep(0.01)
                    continue
            if not _LINE.fullmatch(data):
                raise NanokernError(f"exists and was not written by nanokern; {NEEDED}", path)
            os.unlink(path)  # a lock whose holder was killed: it is ours to remove
        finally:
            os.close(fd)


def _release(path: Path, fd: int) -> None:
    try:
        if _same_file(fd, path):
            os.unlink(path)  # while still holding it: a waiter re-checks the file
    finally:
        os.close(fd)


@contextmanager
def hold_file(path: str | os.PathLike, busy: str, wait: bool = False, on_wait=None, name=None):
    """Hold the lock file `path` for the duration of the block. `busy` is the message when
    another process holds it ({who}: the holder's line, {path}); the error names `name`
    (default: path). wait: block until it is released instead."""
    path = Path(os.path.abspath(path))
    key = str(path)
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        from nanokern.execute import signals

        fd = _acquire(path, busy, path if name is None else name, wait, on_wait)
        with _guard:
            entry = _held[key] = [fd, 1, signals.at_quick_exit(lambda: _release(path, fd))]
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
            _release(path, entry[0])


def hold(dst: str | os.PathLike, wait: bool = False, on_wait=None):
    """Hold the lock of output `dst` (`DST.lock` beside it) for the duration of the block."""
    path = lock_path(dst)
    path.parent.mkdir(parents=True, exist_ok=True)
    return hold_file(path, "in use by {who} (another conversion writes this output; --wait to wait for it)",
                     wait=wait, on_wait=on_wait, name=dst)
