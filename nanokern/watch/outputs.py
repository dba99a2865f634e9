"""OUT_ROOT's own files: the watch's lock (one watch per OUT_ROOT), the `latest` link, moving
aside an export whose step was rewritten, and removing old exports (--keep-last) — only
folders this watch made, never anything else.

OUT_ROOT holds `<step>/` (each an export, put in place atomically by convert's execute),
`latest` (a relative symlink to the newest export, swapped with one rename), `nanokern-watch.jsonl`
(events.py), `nanokern-watch.lock`, and while an export runs convert's own `<step>.lock` and
`<step>.partial-*` beside it (what a kill leaves of those is removed when the watch starts).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.execute import lock as outlock
from nanokern.execute.replace import made_by_nanokern

LOCK = "nanokern-watch.lock"
LATEST = "latest"
_REMOVING = ".nanokern-removing-"
SUPERSEDED = ".superseded-"


def hold_lock(out_root: Path) -> int:
    """One watch per OUT_ROOT: an flock held for the life of the process (released by the kernel
    however it ends); a second watch refuses naming the holder."""
    path = out_root / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        who = outlock.holder(fd)
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise NanokernError(f"another nanokern watch exports here: {who} ({path})", out_root) from None
        raise
    outlock.write_holder(fd)
    return fd


def check_latest(out_root: Path, made: set[str]) -> None:
    """OUT_ROOT/latest is absent or the watch's own: a symlink to the bare name of an export its
    log records (`made`). Anything else is the user's: refused, never removed or replaced."""
    p = out_root / LATEST
    if not p.is_symlink():
        if p.exists():
            raise NanokernError("exists and is not a symlink: the watch keeps a `latest` link here; move it away", p)
        return
    target = os.readlink(p)
    if target not in made:
        raise NanokernError(f"a symlink the watch did not make (to {target!r}; the watch's log records no export of "
                            "that name): move it away, the watch keeps a `latest` link here", p)


def point_latest(out_root: Path, step: str | None, made: set[str]) -> None:
    """OUT_ROOT/latest -> step (relative), swapped in one rename; None removes it. Only a
    `latest` the watch made is replaced or removed (check_latest)."""
    link = out_root / LATEST
    check_latest(out_root, made)
    if step is None:
        if link.is_symlink():
            link.unlink()
        return
    if link.is_symlink() and os.readlink(link) == step:
        return
    tmp = out_root / f".{LATEST}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(step, tmp)
    os.replace(tmp, link)


def is_own_export(out_root: Path, checkpoints: Path, step: str) -> Path | None:
    """OUT_ROOT/step if it is a real folder directly in OUT_ROOT, holding convert's manifest, and
    nowhere inside CHECKPOINTS_PATH; None otherwise (then it is never touched)."""
    if not step.isdigit():
        return None
    p = out_root / step
    if p.is_symlink() or not made_by_nanokern(p):
        return None
    real, root, ck = (Path(os.path.realpath(x)) for x in (p, out_root, checkpoints))
    if real.parent != root or real.is_relative_to(ck) or ck.is_relative_to(real):
        return None
    return p


def remove_export(out_root: Path, checkpoints: Path, step: str) -> bool:
    """Remove an export this watch made (the caller knows it from the log): renamed aside first,
    so a kill never leaves half a folder at OUT_ROOT/step. False if it is not one (left alone)."""
    p = is_own_export(out_root, checkpoints, step)
    if p is None:
        return False
    aside = out_root / f"{_REMOVING}{step}"
    os.replace(p, aside)
    shutil.rmtree(aside)
    return True


def supersede(out_root: Path, checkpoints: Path, step: str) -> Path | None:
    """Rename the export OUT_ROOT/step aside, to `<step>.superseded-<N>` (kept: the step was
    rewritten since, so it may hold the only copy of the old weights); None if there is no
    export of the watch's there (nothing is moved)."""
    p = is_own_export(out_root, checkpoints, step)
    if p is None:
        return None
    taken = [q.name[len(step) + len(SUPERSEDED):] for q in out_root.glob(f"{step}{SUPERSEDED}*")]
    n = 1 + max((int(t) for t in taken if t.isascii() and t.isdigit()), default=0)
    aside = out_root / f"{step}{SUPERSEDED}{n}"
    os.rename(p, aside)  # (a name above every one taken: nothing there is replaced)
    return aside


def finish_removals(out_root: Path) -> None:
    """A kill during remove_export leaves `.nanokern-removing-<step>`: finish removing it."""
    for p in out_root.glob(f"{_REMOVING}*"):
        if p.name[len(_REMOVING):].isdigit() and p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def clear_stale_locks(out_root: Path) -> None:
    """A kill between an export's rename and the release of its lock leaves `<step>.lock` (its
    holder removes it on release): each one no process holds is taken and released, which removes
    it; one still held (a convert the user runs by hand, say) is left alone."""
    for p in out_root.glob("*.lock"):
        step = p.name[: -len(".lock")]
        if step.isdigit() and p.is_file() and not p.is_symlink():
            try:
                with outlock.hold(out_root / step):
                    pass
            except NanokernError:
                pass


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
