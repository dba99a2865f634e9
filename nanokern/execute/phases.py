"""Where a conversion's time goes, for `bench convert`'s breakdown: off unless the environment
names a file in NANOKERN_PHASES (read once, at import). Then the command adds the seconds of
each phase (plan, prepare, read+kernel and write per worker thread, sync, finish, rename) and
notes a few instants on the system-wide monotonic clock, which the parent process shares, and
execute() writes them as JSON when the output is in place. Off, every hook is a no-op."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time

FILE = os.environ.get("NANOKERN_PHASES") or None


class Phases:
    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.marks: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.monotonic())

    @contextlib.contextmanager
    def span(self, name: str):
        self.mark(name)
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - t0)


ACTIVE: Phases | None = Phases() if FILE else None


def span(name: str):
    """A block timed as phase `name` (nothing when off)."""
    return ACTIVE.span(name) if ACTIVE is not None else contextlib.nullcontext()


def add(name: str, amount: float) -> None:
    """Add to phase `name` (seconds, or a count; nothing when off)."""
    if ACTIVE is not None:
        ACTIVE.add(name, amount)


def dump() -> None:
    """Write what was gathered (rank 0 only; nothing when off)."""
    if ACTIVE is None or int(os.environ.get("RANK", "0")) != 0:
        return
    ACTIVE.mark("end")
    with open(FILE, "w") as f:
        json.dump({"seconds": ACTIVE.seconds, "marks": ACTIVE.marks}, f)
