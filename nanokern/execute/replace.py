"""Putting a finished output folder at DST, and cleaning up what a killed run left beside it.

Replacing an existing DST (--force) so that a kill at any moment leaves a complete DST, old or
new: the finished folder and DST are swapped in one atomic renameat2(RENAME_EXCHANGE), then the
old one (now at the partial folder's name) is removed: the files its manifest lists, never
anything else. An intent file beside DST (`DST.replacing`), written before the swap and removed
after the clean-up, names both folders by name and inode and tells the next run what a kill left
behind (`recover`). Where the filesystem cannot exchange, DST is renamed aside first
(`DST.old-<hex>`) and the next run puts back whichever complete folder a kill left. Nothing
beside DST is removed unless nanokern provably made it: a name alone proves nothing.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.execute.durable import fsync_dir
from nanokern.execute.manifest import JOURNAL_GLOB, MANIFEST, MARKER, work_token
from nanokern.execute.owned import foreign, listing, remove_owned, written


_OLD = re.compile(r"\.old-[0-9a-f]{12}")  # DST.old-<hex>: an old DST renamed aside by replace()
_INTENT = "nanokern-replacing"


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
    return dst.is_dir() and written(dst, complete=True) is not None


def check_target(dst: Path, force: bool) -> None:
    """An existing DST is replaced only with --force, only when nanokern wrote it (or it is an
    empty folder) and only when nothing else is in it: --force never deletes a file of the user's."""
    if not (dst.exists() or dst.is_symlink()):
        return
    if not (made_by_nanokern(dst) or (dst.is_dir() and not any(dst.iterdir()))):
        raise NanokernError("output exists and was not written by nanokern (no " + MANIFEST + "): "
                            "move it away or choose another output (nanokern replaces only folders it wrote)", dst)
    if not force:
        raise NanokernError("output exists (use --force to replace it)", dst)
    theirs = foreign(dst)
    if theirs:
        raise NanokernError(f"holds {len(theirs)} file(s) nanokern did not write ({listing(theirs)}): move them out first "
                            f"(--force replaces only what nanokern wrote)", dst)
    if _read_intent(dst) is False:
        raise NanokernError(f"exists and was not written by nanokern; nanokern needs this name to replace "
                            f"{dst.name} safely: move it away", _intent_path(dst))


def _intent_path(dst: Path) -> Path:
    return dst.parent / f"{dst.name}.replacing"


def _read_intent(dst: Path) -> dict | bool | None:
    """The intent nanokern left beside DST (a dict); None: there is none; False: a file of the
    user's is at its name (never read past 4 kB, never followed, never removed)."""
    path = _intent_path(dst)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > 4096:
        return False
    try:
        info = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return info if isinstance(info, dict) and info.get("format") == _INTENT and info.get("dst") == dst.name else False


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
    tmp = dst.parent / f".{dst.name}.replacing-{secrets.token_hex(6)}"  # a new file: nothing of the user's is opened
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        os.write(fd, json.dumps({"format": _INTENT, "dst": dst.name, **info}).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, _intent_path(dst))  # (check_target refused a file of the user's there)
    fsync_dir(dst.parent)


def _ino(p: Path) -> int | None:
    try:
        return os.lstat(p).st_ino
    except FileNotFoundError:
        return None


def _drop_old(old: Path) -> None:
    """Remove the replaced output: what nanokern wrote in it (a symlink DST: the link itself)."""
    if old.is_symlink() or not old.is_dir():
        old.unlink()
    else:
        remove_owned(old)


def replace(work: Path, dst: Path) -> None:
    """Move the finished folder `work` to `dst`, swapping atomically with an existing one."""
    if dst.exists() or dst.is_symlink():
        info = {"mode": "exchange", "new": work.name, "new_ino": _ino(work), "old_ino": _ino(dst)}
        _write_intent(dst, info)
        if exchange(work, dst):
            fsync_dir(dst.parent)
            _drop_old(work)  # (the old output, now at the partial folder's name)
        else:
            old = dst.parent / f"{dst.name}.old-{secrets.token_hex(6)}"
            _write_intent(dst, {**info, "mode": "rename", "old": old.name})
            os.replace(dst, old)
            os.replace(work, dst)
            fsync_dir(dst.parent)
            _drop_old(old)
        _intent_path(dst).unlink()
    else:
        os.replace(work, dst)
    fsync_dir(dst.parent)
    (dst / MARKER).unlink(missing_ok=True)  # (a marker a kill leaves here is counted as nanokern's)


def settle(dst: Path) -> None:
    """A kill right after the rename into place leaves the partial folder's marker inside DST, a
    complete output: remove it (whoever finds DST finished: the next run for DST, the watch)."""
    m = dst / MARKER
    if made_by_nanokern(dst) and m.is_file() and not m.is_symlink():
        m.unlink()


def recover(dst: Path, keep: Path | None = None) -> None:
    """Under DST's lock, before a run: finish or undo what a killed run left beside DST (a swap
    in progress, the partial folders of other plans); `keep` is this run's own. Only what
    nanokern provably made is touched: a folder the intent names by name and inode, a partial
    folder holding nanokern's marker."""
    parent = dst.parent
    info = _read_intent(dst)
    if info:
        new, old = parent / str(info.get("new", "")), parent / str(info.get("old", ""))
        if new.parent != parent or not new.name.startswith(f"{dst.name}.partial-"):
            new = None
        if old.parent != parent or not _OLD.fullmatch(old.name.removeprefix(dst.name)) or _ino(old) != info.get("old_ino"):
            old = None
        if info.get("mode") == "exchange":
            if new and _ino(dst) == info.get("new_ino") and _ino(new) == info.get("old_ino"):
                _drop_old(new)  # swapped: `new` holds the old output
        elif info.get("mode") == "rename":
            if not (dst.exists() or dst.is_symlink()):
                complete = new and _ino(new) == info.get("new_ino") and not any(new.glob(JOURNAL_GLOB)) and (new / MANIFEST).is_file()
                if complete:
                    os.replace(new, dst)  # (the journals go just before the rename)
                elif old:
                    os.replace(old, dst)
                    old = None
            if old and (dst.exists() or dst.is_symlink()):
                _drop_old(old)
        _intent_path(dst).unlink()
        fsync_dir(parent)
    settle(dst)
    for stale in parent.glob(f"{glob.escape(dst.name)}.partial-*"):
        if stale != keep and work_token(stale) is not None:  # only folders nanokern made
            shutil.rmtree(stale)
