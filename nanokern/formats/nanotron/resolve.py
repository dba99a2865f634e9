"""Which checkpoint a path means: a step folder, the step latest.txt names, or (a checkpoints_path
without latest.txt) its newest complete step, found once per process and remembered while the
folder's steps look the same. The top of the package: it reads steps (steps.py), which read
checkpoints (checkpoint.py)."""

from __future__ import annotations

import os
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.formats.nanotron.checkpoint import NanotronCheckpoint, read_step
from nanokern.formats.nanotron.files import step_dir_of
from nanokern.formats.nanotron.steps import newest_complete, step_names

_found: dict[str, tuple[tuple, Path, str]] = {}  # folder -> (what its steps looked like, the step taken, the note)


def find_step_dir(path: str | os.PathLike, notes: list[str] | None = None) -> Path:
    """A checkpoints_path with latest.txt, a step folder holding model/ and model_config.json, or
    a checkpoints_path without latest.txt: then its newest complete step, with a line saying so
    appended to `notes` (none complete: an error naming every step and why)."""
    p = Path(path)
    step_dir = step_dir_of(p)
    if step_dir is not None:
        return step_dir
    looks = _looks(p)
    key = os.path.abspath(p)
    hit = _found.get(key)
    if hit is None or hit[0] != looks:
        found = newest_complete(p)
        if found is None:
            raise NanokernError("not a Nanotron checkpoint (no latest.txt, no model/ folder)", p)
        _found[key] = hit = (looks, *found)
    if notes is not None:
        notes.append(hit[2])
    return hit[1]


def _looks(root: Path) -> tuple:
    """The step folders and the times their entries last changed (model_config.json, written last,
    appears in its step folder): what a newer complete step would change."""
    out = []
    for name in step_names(root):
        try:
            out.append((name, os.stat(root / name).st_mtime_ns))
        except FileNotFoundError:
            pass
    return tuple(out)


def read_checkpoint(path: str | os.PathLike) -> NanotronCheckpoint:
    """The checkpoint a path means (see find_step_dir), read from its configs and headers."""
    notes: list[str] = []  # a checkpoints_path without latest.txt: which step was taken
    return read_step(find_step_dir(path, notes), notes)


def is_nanotron(path: str | os.PathLike) -> bool:
    """A step folder, or a checkpoints_path (with latest.txt, or step folders: integer names)."""
    p = Path(path)
    if (p / "latest.txt").exists() or (p / "model").is_dir():
        return True
    return p.is_dir() and any((p / n / "model").is_dir() or (p / n / "model_config.json").exists() for n in step_names(p))
