"""Putting a finished output folder at DST, and cleaning up what a killed run left beside it.

Replacing an existing DST (--force) so that a kill at any moment leaves a complete DST, old or
new: the finished folder and DST are swapped in one atomic renameat2(RENAME_EXCHANGE), then the
old one (now at the partial folder's name) is removed. An intent file beside DST, written before
the swap and removed after the clean-up, tells the next run what a kill left behind (`recover`).
Where the filesystem cannot exchange, DST is renamed aside first and the next run puts back
whichever complete folder a kill left.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.execute.durable import fsync_dir, write_small
from nanokern.execute.manifest import JOURNAL_GLOB, MANIFEST


PARTIAL = re.compile(r"\.partial-[0-9a-f]{16}")  # the suffix manifest.partial_dir gives this run's folder
OLD = re.compile(r"\.old-[0-9]+")  # DST.old-PID: an old DST renamed aside by replace()


def check_apart(src: str | os.PathLike, dst: str | os.PathLike, what: str = "the source") -> None:
    """Refuse, before any byte is written, a DST that is SRC, lies inside it or contains it
    (symlinks followed): replacing DST or cleaning up beside it would delete what the user gave."""
    s, d = Path(src).resolve(), Path(dst).resolve()
    if d == s:
        raise NanokernError(f"the output is {what} ({s}): choose another output folder", dst)
    if s in d.parents:
        raise NanokernError(f"the output lies inside {what} ({s}): choose a folder outside it", dst)
    if d in s.parents:
        raise NanokernError(f"the output contains {what} ({s}): choose a folder outside it", dst)


def made_by_nanokern(dst: Path) -> bool:
    """A complete nanokern output (its manifest is written last, just before the rename)."""
    return dst.is_dir() and (dst / MANIFEST).is_file()


def check_target(dst: Path, force: bool) -> None:
    """An existing DST is replaced only with --force, and only when nanokern wrote it (or it is
    an empty folder): --force never deletes a folder of the user's."""
    if not (dst.exists() or dst.is_symlink()):
        return
    if not (made_by_nanokern(dst) or (dst.is_dir() and not any(dst.iterdir()))):
        raise NanokernError("output exists and was not written by nanokern (no " + MANIFEST + "): "
                            "move it away or choose another output (nanokern replaces only folders it wrote)", dst)
    if not force:
        raise NanokernError("output exists (use --force to replace it)", dst)


def _intent_path(dst: Path) -> Path:
    return dst.parent / f"{dst.name}.replacing"


def exchange(a: Path, b: Path) -> bool:
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
    write_small(_intent_path(dst), json.dumps(info).encode())
    fsync_dir(dst.parent)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def replace(work: Path, dst: Path) -> None:
    """Move the finished folder `work` to `dst`, swapping atomically with an existing one."""
    if dst.exists() or dst.is_symlink():
        _write_intent(dst, {"mode": "exchange", "new": work.name, "ino": work.stat().st_ino})
        if exchange(work, dst):
            fsync_dir(dst.parent)
            _remove(work)
        else:
            old = dst.parent / f"{dst.name}.old-{os.getpid()}"
            _write_intent(dst, {"mode": "rename", "new": work.name, "old": old.name})
            os.replace(dst, old)
            os.replace(work, dst)
            fsync_dir(dst.parent)
            _remove(old)
        _intent_path(dst).unlink()
    else:
        os.replace(work, dst)
    fsync_dir(dst.parent)


def recover(dst: Path, keep: Path | None = None) -> None:
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
        if new.parent != parent or not PARTIAL.fullmatch(new.name.removeprefix(dst.name)):
            new = parent  # not a name this module writes: touch nothing
        if info.get("mode") == "exchange":
            # swapped when DST is the new folder: then `new` holds the old output
            if dst.exists() and dst.stat().st_ino == info.get("ino") and new.is_dir() and new != parent:
                shutil.rmtree(new)
        elif info.get("mode") == "rename" and not dst.exists():
            old = parent / info.get("old", "")
            if old.parent != parent or not OLD.fullmatch(old.name.removeprefix(dst.name)):
                old = parent
            if new.is_dir() and new != parent and not any(new.glob(JOURNAL_GLOB)) and (new / MANIFEST).is_file():
                os.replace(new, dst)  # complete: the journals go just before the rename
            elif old.is_dir() and old != parent:
                os.replace(old, dst)
        intent.unlink()
        fsync_dir(parent)
    for stale in parent.glob(f"{glob.escape(dst.name)}.*"):  # only the names nanokern gives its own folders
        suffix = stale.name.removeprefix(dst.name)
        if stale.is_symlink() or stale == keep or not (OLD.fullmatch(suffix) or PARTIAL.fullmatch(suffix)):
            continue
        shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
