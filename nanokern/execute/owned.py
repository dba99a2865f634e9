"""What nanokern wrote inside one of its output folders, and removing exactly that.

An output's manifest (`nanokern-manifest.json`, written last) lists every file the run wrote:
the weight files (`files`) and the configs, index and tokenizer files (`written`). Anything
else in the folder is the user's (eval results, notes): it is reported by `foreign`, and
`remove_owned` leaves it, and the folders that hold it, where they are. Symlinks are never
followed: a symlink is never something nanokern wrote.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from pathlib import Path, PurePosixPath

from nanokern.execute.manifest import JOURNAL_GLOB, MANIFEST, MARKER

_REMOVING = ".nanokern-removing.json"  # the manifest, while remove_owned runs
# manifests written before they listed the configs (`written`): the names nanokern gave those
_LEGACY = ("config.json", "generation_config.json", "model.safetensors.index.json", "latest.txt",
           "*/model_config.json", "*/checkpoint_metadata.json", "*/config.yaml")


def _is(root: Path, rel: str, kind) -> bool:
    """ROOT/rel is of `kind` (stat.S_ISREG, S_ISDIR), itself and its folders no symlink."""
    parts = PurePosixPath(rel).parts
    try:
        return (not any(os.path.islink(root.joinpath(*parts[:i])) for i in range(1, len(parts)))
                and kind(os.lstat(root / rel).st_mode))
    except (FileNotFoundError, NotADirectoryError):
        return False


def _is_file(root: Path, rel: str) -> bool:
    return _is(root, rel, stat.S_ISREG)


def written(root: Path, complete: bool = False) -> set[str] | None:
    """The relative paths the manifest of ROOT says nanokern wrote (the manifest included);
    None when ROOT holds no readable manifest (then nothing in it is provably nanokern's).
    A removal in progress holds the manifest under another name (complete=True: not counted)."""
    names = (MANIFEST,) if complete else (MANIFEST, _REMOVING)
    m = next((n for n in names if _is_file(root, n)), None)
    if os.path.islink(root) or m is None:
        return None
    try:
        data = json.loads((root / m).read_text())
        names = set(data["files"]) | set(data.get("written", ()))
    except (json.JSONDecodeError, KeyError, TypeError, OSError, UnicodeDecodeError):
        return None
    if "written" not in data:
        from nanokern.formats.tokenizer import TOKENIZER_FILES

        names |= {str(p.relative_to(root)) for pat in _LEGACY + TOKENIZER_FILES for p in root.glob(pat)}
    safe = {n for n in names if isinstance(n, str) and n and not PurePosixPath(n).is_absolute()
            and ".." not in PurePosixPath(n).parts}
    return safe | {MANIFEST, _REMOVING}


def _ours(rel: str, mine: set[str]) -> bool:
    return rel in mine or fnmatch.fnmatch(rel, JOURNAL_GLOB) or rel == MARKER


def _dirs(mine: set[str]) -> set[str]:
    """The folders nanokern made to hold its files ("." is ROOT)."""
    return {str(p) for n in mine for p in PurePosixPath(n).parents}


def foreign(root: Path, extra=()) -> list[str]:
    """Relative paths in ROOT that nanokern did not write (a folder of the user's is one entry);
    `extra`: more names counted as nanokern's (e.g. what the watch adds beside an export)."""
    mine = (written(root) or {MANIFEST, _REMOVING}) | set(extra)
    dirs = _dirs(mine)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # (symlinks are not followed)
        base = os.path.relpath(dirpath, root)
        rel = (lambda n: n) if base == "." else (lambda n: f"{base}/{n}")
        for d in list(dirnames):
            if rel(d) not in dirs or os.path.islink(os.path.join(dirpath, d)):
                out.append(rel(d) + ("" if os.path.islink(os.path.join(dirpath, d)) else "/"))
                dirnames.remove(d)
        out += [rel(f) for f in filenames if not (_ours(rel(f), mine) and _is_file(root, rel(f)))]
    return sorted(out)


def listing(paths: list[str]) -> str:
    """The first three paths, and how many more: what one line names."""
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")


def remove_owned(root: Path, extra=()) -> list[str]:
    """Remove what nanokern wrote in ROOT, then the folders left empty, ROOT too; returns what
    is left (the user's). The manifest is first renamed aside (from then on ROOT is no complete
    output) and removed last, so a removal cut short by a kill is finished by the next one."""
    mine = (written(root) or {MANIFEST}) | set(extra)
    left = foreign(root, extra)
    if _is_file(root, MANIFEST):
        os.rename(root / MANIFEST, root / _REMOVING)
    for rel in sorted(mine - {_REMOVING} | {j.name for j in root.glob(JOURNAL_GLOB)} | {MARKER}) + [_REMOVING]:
        if _is_file(root, rel):
            os.unlink(root / rel)
    for d in sorted(_dirs(mine), key=lambda d: -len(PurePosixPath(d).parts)):  # deepest first, ROOT last
        if _is(root, d, stat.S_ISDIR):
            try:
                os.rmdir(root / d)
            except OSError:
                pass  # holds something of the user's
    return left
