"""OUT_ROOT's own files: the watch's lock (one watch per OUT_ROOT), the `latest` link, moving
aside an export whose step was rewritten, and removing old exports (--keep-last) — only
folders this watch made, never anything else.

OUT_ROOT holds `<step>/` (each an export, put in place atomically by convert's execute),
`latest` (a relative symlink to the newest export, swapped with one rename), `nanokern-watch.jsonl`
(events.py), `nanokern-watch.lock`, and while an export runs convert's own `<step>.lock` and
`<step>.partial-*` beside it (what a kill leaves of those is removed when the watch starts).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.execute import lock as outlock
from nanokern.execute.owned import foreign, remove_owned, written
from nanokern.execute.replace import made_by_nanokern
from nanokern.watch.hooks import PARITY_FILE

LOCK = "nanokern-watch.lock"
LATEST = "latest"
_REMOVING = ".nanokern-removing-"
SUPERSEDED = ".superseded-"


def hold_lock(out_root: Path):
    """One watch per OUT_ROOT: `nanokern-watch.lock`, held for the life of the watch (a context
    manager; its file is removed on release). A second watch refuses naming the holder; a file
    of the user's at that name is refused, naming it, and left alone."""
    return outlock.hold_file(out_root / LOCK, "another nanokern watch exports here: {who} ({path})", name=out_root)


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
    tmp = out_root / f".{LATEST}.tmp-{secrets.token_hex(6)}"  # (a new name: nothing there is removed)
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


OURS = (PARITY_FILE,)  # what the watch adds to an export (beside what its manifest lists)


def remove_export(out_root: Path, checkpoints: Path, step: str) -> list[str] | None:
    """Remove what nanokern wrote of an export this watch made (the caller knows it from the
    log): the folder renamed aside first when it holds nothing else, so a kill never leaves half a
    folder at OUT_ROOT/step; otherwise its own files removed in place, manifest first (from then
    on it is no complete export), and the user's files left there. Returns what is left (the
    user's relative paths); None if it is no export of the watch's (nothing touched)."""
    p = is_own_export(out_root, checkpoints, step)
    if p is None:
        return None
    aside = out_root / f"{_REMOVING}{step}"
    if foreign(p, extra=OURS) or os.path.lexists(aside):
        return remove_owned(p, extra=OURS)
    os.rename(p, aside)
    return remove_owned(aside, extra=OURS)


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
    """A kill during remove_export leaves `.nanokern-removing-<step>`: when it still holds its
    manifest (the proof of what nanokern wrote there), what that lists is removed, and the folder
    once empty; anything else is left alone."""
    for p in out_root.glob(f"{_REMOVING}*"):
        tail = p.name[len(_REMOVING):]
        if tail.isascii() and tail.isdigit() and p.is_dir() and not p.is_symlink() and written(p) is not None:
            remove_owned(p, extra=OURS)


def clear_stale_locks(out_root: Path) -> None:
    """A kill between an export's rename and the release of its lock leaves `<step>.lock` (its
    holder removes it on release): each one no process holds is taken and released, which removes
    it; one still held (a convert the user runs by hand, say), or a file of the user's at that
    name (lock.hold refuses it), is left alone."""
    for p in out_root.glob("*.lock"):
        step = p.name[: -len(".lock")]
        if step.isascii() and step.isdigit() and p.is_file() and not p.is_symlink():
            try:
                with outlock.hold(out_root / step):
                    pass
            except NanokernError:
                pass


def folder_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
