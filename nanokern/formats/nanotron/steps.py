"""The steps of a Nanotron checkpoints folder, and whether each one is complete on disk.

Nanotron writes a step in this order (trainer.py save_checkpoint, serialize/main.py): config.yaml,
the weights, optimizer, lr_scheduler, checkpoint_metadata.json, then after a barrier the random
states, latest.txt in the parent, and model_config.json last, by every rank, without a rename (a
reader may see it empty or half written). There is no completion marker, so completeness is
judged from what is on disk: model_config.json and config.yaml parse, and every shard file the
slice metadata and the config imply is there, each as long as its safetensors header says
(read_checkpoint's checks). A failing verdict names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from nanokern.errors import NanokernError
from nanokern.io.regular import read_text
from nanokern.io.units import human_bytes


@dataclass
class Step:
    """One integer-named folder of a checkpoints folder, as last looked at."""

    name: str
    number: int
    path: Path
    bytes: int = 0
    files: int = 0
    mtime: float = 0.0  # the newest file's (the step folder's own when empty)
    signature: str = ""  # changes when any file is added, removed, grows or is rewritten
    source: str = ""  # the same over what an export reads only: model/, model_config.json, config.yaml
    reads: dict | None = None  # what `source` covers: relative path -> (size, mtime_ns)


@dataclass
class Verdict:
    complete: bool
    reason: str | None = None  # why not: one line naming the file
    file: str | None = None
    looks_complete: bool = False  # model_config.json (written last) parses: a short file then is damage, not progress

    def line(self) -> str:
        return "complete" if self.complete else f"incomplete: {self.reason}"


def step_number(name: str) -> int | None:
    return int(name) if name.isdigit() and name.isascii() else None


def list_steps(root: str | os.PathLike) -> list[Step]:
    """Every integer-named sub-folder of root, oldest step first, with size, file count, time and
    signature (one walk of each step folder)."""
    root = Path(root)
    steps = []
    for name in step_names(root):
        st = Step(name, int(name), root / name)
        try:
            observe(st)
        except FileNotFoundError:  # deleted while we looked
            continue
        steps.append(st)
    return steps


def step_names(root: Path, links: list[str] | None = None) -> list[str]:
    """The integer-named sub-folders of root, oldest step first (one scandir: cheap when idle).
    A symlink is never a step (nothing behind it is read): its name goes to `links` if given."""
    names = []
    try:
        with os.scandir(root) as it:
            for e in it:
                if step_number(e.name) is None:
                    continue
                if e.is_symlink():
                    if links is not None and e.is_dir():
                        links.append(e.name)
                elif e.is_dir(follow_symlinks=False):
                    names.append(e.name)
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise NanokernError("is not a directory", root) from None
    if links is not None:
        links.sort(key=int)
    return sorted(names, key=int)


EXPORT_READS = ("model_config.json", "config.yaml")  # beside model/: what an export of the step reads


def observe(st: Step) -> Step:
    """Refresh size, count, newest time and signature of a step folder from a walk of it."""
    h = hashlib.sha256()
    total = count = 0
    newest = os.stat(st.path).st_mtime
    stack = [st.path]
    entries = []
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(Path(e.path))
                            continue
                        s = e.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    entries.append((os.path.relpath(e.path, st.path), s.st_size, s.st_mtime_ns))
                    total += s.st_size
                    count += 1
                    newest = max(newest, s.st_mtime)
        except FileNotFoundError:
            if d == st.path:
                raise
    read = hashlib.sha256()
    reads = {}
    for rel, size, mt in sorted(entries):
        line = f"{rel}\0{size}\0{mt}\n".encode()
        h.update(line)
        if rel in EXPORT_READS or rel.startswith("model" + os.sep):
            read.update(line)
            reads[rel] = (size, mt)
    st.bytes, st.files, st.mtime, st.signature = total, count, newest, h.hexdigest()[:16]
    st.source, st.reads = read.hexdigest()[:16], reads
    return st


def only_removed(before: dict, after: dict) -> bool:
    """`after` (a step's reads now) is `before` less some files, none added or rewritten: the
    step is being deleted (rm -rf), not rewritten."""
    return len(after) < len(before) and all(before.get(rel) == v for rel, v in after.items())


def verdict(step_dir: str | os.PathLike) -> Verdict:
    """Is this step folder complete? Reads configs and safetensors headers only."""
    from nanokern.formats.nanotron.checkpoint import read_step
    from nanokern.formats.nanotron.files import read_model_config

    step_dir = Path(step_dir)
    if not step_dir.is_dir():
        return Verdict(False, f"{step_dir}: does not exist", str(step_dir))
    try:
        read_model_config(step_dir)
    except NanokernError as e:
        return Verdict(False, str(e), e.path)
    try:
        for name, load in (("config.yaml", _yaml), ("checkpoint_metadata.json", json.loads)):
            f = step_dir / name
            if f.exists():  # config.yaml is Nanotron's first file; other writers may not make it
                try:
                    load(read_text(f))  # (a FIFO or a device: refused from its stat, never opened)
                except (ValueError, OSError) as e:  # JSON and YAML errors are ValueErrors here
                    raise NanokernError(f"unreadable ({str(e).splitlines()[0] if str(e) else type(e).__name__})", f) from None
        read_step(step_dir)
    except NanokernError as e:
        return Verdict(False, str(e), e.path, looks_complete=True)
    except OSError as e:  # a file removed while we read
        return Verdict(False, f"{e.filename or step_dir}: {e.strerror or e}", e.filename, looks_complete=True)
    return Verdict(True)


def _yaml(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"not valid YAML ({str(e).splitlines()[0]})") from None


def newest_complete(root: Path) -> tuple[Path, str] | None:
    """For a checkpoints folder without latest.txt: (the newest complete step folder, a line
    saying which was taken); None if root has no step folders; raises naming every step (and
    why each is incomplete) when none is complete."""
    names = step_names(root)
    if not names:
        return None
    why = []
    for name in reversed(names):
        v = verdict(root / name)
        if v.complete:
            skipped = f"; newer incomplete: {', '.join(why)}" if why else ""
            return root / name, f"no latest.txt: took step {name}, the newest complete of {len(names)} step(s) " \
                                f"({', '.join(names)}){skipped}"
        why.append(f"{name} ({v.reason})")
    raise NanokernError(f"no latest.txt and no complete step: {'; '.join(reversed(why))}", root)


def describe(steps: list[Step], verdicts: dict[str, Verdict], chosen: str | None = None) -> list[str]:
    """One line per step: number, complete or why not, size, time."""
    lines = []
    width = max((len(s.name) for s in steps), default=1)
    for s in steps:
        v = verdicts[s.name]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.mtime))
        mark = "  <- this one" if s.name == chosen else ""
        lines.append(f"    {s.name:>{width}}  {human_bytes(s.bytes):>9}  {s.files:5d} files  {when}  {v.line()}{mark}")
    return lines

