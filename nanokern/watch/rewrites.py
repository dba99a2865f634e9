"""Exports whose step was rewritten since (a rollback and a new save of the same step, or a new
run writing OUT_ROOT from another CHECKPOINTS_PATH): the `exported` record names what the export
was made from (`checkpoints`, `signature`), and a step whose source differs now is exported again.

Checked in full when the watch starts; while it runs, a poll stats each exported step's
model_config.json (every save rewrites it, last) and looks in full only at a step where that
changed.
"""

from __future__ import annotations

import os
from pathlib import Path

from nanokern.formats.nanotron import steps as S


def source_of(step_dir: Path) -> S.Step | None:
    """The step as observed now (`source`, `reads`); None when its folder is gone."""
    try:
        return S.observe(S.Step(step_dir.name, int(step_dir.name), step_dir))
    except FileNotFoundError:
        return None


def changed(checkpoints: Path, name: str, rec: dict) -> str | None:
    """Why the export `rec` (an `exported` record) no longer is the step CHECKPOINTS_PATH/name
    holds; None when it still is, or the step folder is gone (then the export is kept as is)."""
    step_dir = checkpoints / name
    if not step_dir.is_dir() or step_dir.is_symlink():
        return None
    was = rec.get("checkpoints")
    if was and os.path.realpath(was) != os.path.realpath(checkpoints):
        return f"CHECKPOINTS_PATH is {os.path.abspath(checkpoints)}, the export was made from {was}"
    now = source_of(step_dir)
    if now is not None and rec.get("signature") and now.source != rec["signature"]:
        return "the step was rewritten since its export"
    return None


class Stamps:
    """model_config.json's (inode, size, mtime) per exported step: a cheap sign of a new save."""

    def __init__(self, checkpoints: Path):
        self.checkpoints = checkpoints
        self.seen: dict[str, tuple | None] = {}

    def _stat(self, name: str) -> tuple | None:
        try:
            st = os.stat(self.checkpoints / name / "model_config.json", follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def note(self, name: str) -> None:
        self.seen[name] = self._stat(name)

    def moved(self, names) -> list[str]:
        """The names whose model_config.json changed (or appeared) since noted; noted again."""
        out = []
        for name in names:
            now = self._stat(name)
            if now is not None and now != self.seen.get(name):
                out.append(name)
            self.seen[name] = now
        return out
