"""The watch's event log, `OUT_ROOT/nanokern-watch.jsonl`: one JSON object per line per event,
appended and fsynced as it happens, and what the log says was done (read back on a restart).

Every record has `time`, `step` (the number), `name` (the step folder's name, `00050` for
step 50; OUT_ROOT/<name> is its export), `event`, `out`, `seconds`, `bytes` (null where they do
not apply) and, by event: `started` (an export begins: `signature` of what the export reads of
the step, its model/ and configs, so a restart knows the folder is its own), `exported`
(`checkpoints`, the absolute CHECKPOINTS_PATH, and `signature`: what the export was made from;
`source_gone` when the step folder was deleted after it was read), `failed` (`error`;
`signature` when the step's own bytes are at fault, so the same bytes are not retried after a
restart), `superseded` (the step was rewritten after its export, or CHECKPOINTS_PATH changed:
`reason`, and `moved_to`, where the old export is kept), `checked` (the parity figures,
`passed`, `suspect`), `exec` (`command`, `returncode`), `removed` (--keep-last). A line cut
short by a kill is skipped when read.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path

from nanokern.errors import NanokernError

LOG = "nanokern-watch.jsonl"


class EventLog:
    def __init__(self, root: Path):
        self.path = Path(root) / LOG

    def append(self, event: str, step: str, out: Path | str | None = None, seconds: float | None = None,
               bytes: int | None = None, **extra) -> dict:  # noqa: A002 - the record's field name
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": int(step), "name": step, "event": event,
               "out": None if out is None else str(out), "seconds": None if seconds is None else round(seconds, 3),
               "bytes": bytes, **extra}
        line = (json.dumps(rec, default=str) + "\n").encode()
        try:  # (never through a symlink, never into a FIFO: appended to the log the watch keeps)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as e:
            raise NanokernError(f"cannot append to the watch's log ({e.strerror}): move it away", self.path) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise NanokernError("is not a regular file, not the watch's log: move it away", self.path)
        try:
            os.write(fd, line)  # one write of one line: appends from several writers do not interleave
            os.fsync(fd)
        finally:
            os.close(fd)
        return rec


def read_events(root: Path) -> list[dict]:
    """Every well-formed record of OUT_ROOT's log, in order (a torn last line is skipped)."""
    path = Path(root) / LOG
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and isinstance(rec.get("event"), str):
            out.append(rec)
    return out


def name_of(rec: dict) -> str:
    """The step folder's name of a record (logs written before `name` was recorded: the number)."""
    name = rec.get("name")
    return name if isinstance(name, str) and name.isascii() and name.isdigit() else str(rec["step"])


@dataclass
class History:
    """What the log says, per step name: the last record of each kind that still holds."""

    started: dict[str, dict] = field(default_factory=dict)  # an export begun, not yet exported nor failed
    exported: dict[str, dict] = field(default_factory=dict)  # made by this watch and not removed since
    ever_exported: set[str] = field(default_factory=set)  # exported once (removed or not): never again
    made: set[str] = field(default_factory=set)  # every name this watch began to export: `latest` may point there
    failed: dict[str, dict] = field(default_factory=dict)  # the last failure, if no export came after
    checked: dict[str, dict] = field(default_factory=dict)
    execd: dict[str, dict] = field(default_factory=dict)

    @classmethod
    def of(cls, records: list[dict]) -> History:
        h = cls()
        for r in records:
            h.add(r)
        return h

    def add(self, r: dict) -> None:
        s, ev = name_of(r), r["event"]
        if ev == "started":
            self.started[s] = r
            self.made.add(s)
        elif ev == "exported":
            began = self.started.pop(s, None)
            if "signature" not in r and began and began.get("signature"):  # a log from before it was recorded here
                r = {**r, "signature": began["signature"]}
            self.failed.pop(s, None)
            self.exported[s] = r
            self.ever_exported.add(s)
            self.made.add(s)
        elif ev == "superseded":  # exported again: its check and command too
            for d in (self.started, self.exported, self.checked, self.execd):
                d.pop(s, None)
            self.ever_exported.discard(s)
        elif ev == "failed":
            self.started.pop(s, None)
            self.failed[s] = r
        elif ev == "removed":
            self.exported.pop(s, None)
        elif ev == "checked":
            self.checked[s] = r
        elif ev == "exec":
            self.execd[s] = r
